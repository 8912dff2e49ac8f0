"""An internal service reading Inlet: look up a profile, page through history, follow
the live stream. It needs only code generated from Inlet's `proto/` folder:

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
        proto/inlet/v1/*.proto
    PYTHONPATH=gen python examples/read_api.py --core 127.0.0.1:50051 --key "$READ_KEY" \
        --user 97980cfea0067 --follow 10

Every call carries a key with the `read` scope as `authorization: Bearer <key>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import grpc

from inlet.v1 import events_pb2, events_pb2_grpc, profiles_pb2, profiles_pb2_grpc


async def main(core: str, key: str, user: str, follow: int) -> None:
    metadata = [("authorization", f"Bearer {key}")]
    async with grpc.aio.insecure_channel(core) as channel:
        profiles = profiles_pb2_grpc.ProfileServiceStub(channel)
        events = events_pb2_grpc.EventServiceStub(channel)

        # 1. The merged profile: traits (newest value per trait), linked ids, groups.
        try:
            profile = await profiles.GetProfile(
                profiles_pb2.GetProfileRequest(id=user), metadata=metadata
            )
            # Each trait's value is the JSON the customer sent (`value_json`); Python's json
            # keeps every digit of a 19-digit id, which a double (the old `value`) would not.
            traits = {key: json.loads(trait.value_json) for key, trait in profile.traits.items()}
            print("profile", json.dumps({"linkedIds": list(profile.linked_ids), "traits": traits}))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            print("profile", json.dumps(None))

        # 2. The user's history, oldest first, a page at a time.
        last_sequence, token = 0, ""
        while True:
            page = await events.ListEvents(
                events_pb2.ListEventsRequest(user_id=user, page_size=100, page_token=token),
                metadata=metadata,
            )
            for event in page.events:
                print("history", event.sequence, event.type, event.message_id)
                last_sequence = max(last_sequence, event.sequence)
            token = page.next_page_token
            if not token:
                break

        # 3. Everything the account commits from here on (resumable from any sequence).
        if follow:
            stream = events.Subscribe(events_pb2.SubscribeRequest(from_now=True), metadata=metadata)
            start = dict(await stream.initial_metadata())["inlet-start-sequence"]
            print("following after", start, flush=True)
            seen = 0
            async for event in stream:
                body = json.loads(event.json)  # the event exactly as Segment sent it
                print("live", event.sequence, event.type, body.get("event", ""), flush=True)
                seen += 1
                if seen == follow:
                    stream.cancel()
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--core", default="127.0.0.1:50051")
    parser.add_argument("--key", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--follow", type=int, default=0, help="stop after this many live events")
    args = parser.parse_args()
    asyncio.run(main(args.core, args.key, args.user, args.follow))
