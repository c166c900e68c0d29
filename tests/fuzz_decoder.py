"""Fuzz target for the FIX decoder (atheris, libFuzzer): `make fuzz`, or by hand

    python tests/fuzz_decoder.py -max_total_time=60 tests/data/fuzz

The input is split into chunks (the first bytes choose the cut points and the limits) and fed to
`Decoder.feed`; every `Message` out of it goes through `check_syntax`. Properties:
- nothing raises (any exception is a crash: a refusal must be a FrameError or a Refusal);
- `Decoder.buffered` never exceeds `Limits.max_message_size` (bounded memory);
- every Message re-decodes, alone, to exactly the same bytes (`decode_one`).

The same properties run under hypothesis in tests/test_adversarial.py (fast, in `make test`).
The seed corpus is tests/data/fuzz (copies of tests/data/corpus: valid and broken messages).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris

with atheris.instrument_imports():
    from fixproxy.codec import Decoder, FrameError, Limits, Message, decode_one

_LIMITS = (Limits(), Limits(max_message_size=128, max_fields=16), Limits(max_message_size=64, max_tag_digits=2))


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    limits = _LIMITS[data[0] % len(_LIMITS)]
    step = data[1] % 64  # 0: one feed; otherwise chunks of 1..63 bytes
    body = data[2:]
    dec = Decoder(limits)
    chunks = [body] if step == 0 else [body[i : i + step] for i in range(0, len(body), step)]
    for chunk in chunks:
        for item in dec.feed(chunk):
            if isinstance(item, Message):
                item.check_syntax(limits)
                again = decode_one(item.raw, limits)
                if again.raw != item.raw:
                    raise AssertionError(f"re-decode changed the message: {item.raw!r} -> {again.raw!r}")
            elif not isinstance(item, FrameError):
                raise AssertionError(f"unexpected item {item!r}")
        if dec.buffered > limits.max_message_size:
            raise AssertionError(f"decoder holds {dec.buffered} bytes > {limits.max_message_size}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
