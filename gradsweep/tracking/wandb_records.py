"""Read what a W&B run logged from its own `.wandb` file: no server, no wandb service.

wandb 0.31 writes no `wandb-summary.json` or `config.yaml` for offline runs: config, history,
summary and exit code live only in the run's `.wandb` transaction log. Its Python reader
(`wandb/sdk/internal/datastore.py`) left the library when the internals moved to the Go
`wandb-core`, so this module reads the format itself. It is leveldb's log format
(https://github.com/google/leveldb/blob/main/doc/log_format.md) behind a 7-byte file header:

    file   := ":W&B" magic:uint16=0xBEE1 version:uint8=0, then 32 KiB blocks
    block  := record* zero-padding?      (a tail shorter than a record header is padding)
    record := crc32:uint32 length:uint16 type:uint8 data[length]     (little-endian)

`type` is FULL (1), or FIRST (2), MIDDLE (3)..., LAST (4) for a payload split across blocks;
the crc is zlib's crc32 of the type byte then the data. Each payload is a
`wandb.proto.wandb_internal_pb2.Record`. Values are JSON text (`value_json`) under a `key` or
a `nested_key` path; NaN and Infinity come back as floats.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
FILE_IDENT, FILE_MAGIC, FILE_VERSION = b":W&B", 0xBEE1, 0
RECORD_HEADER = struct.Struct("<IHB")  # crc32, length, type
BLOCK_LEN = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
# The crc of each record type byte seeds the crc of its data, as the writer computes it.
_TYPE_CRC = {kind: zlib.crc32(bytes([kind])) for kind in (FULL, FIRST, MIDDLE, LAST)}
# wandb's own bookkeeping in config and summary (telemetry, runtime), not the user's values.
_WANDB_KEY = "_wandb"


@dataclass
class RunRecords:
    """Everything a run logged, as its `.wandb` file holds it."""

    run_id: str | None = None
    group: str | None = None
    sweep_id: str | None = None  # the W&B sweep the run belongs to (`wandb agent`)
    config: dict[str, object] = field(default_factory=dict)
    history: list[dict[str, object]] = field(default_factory=list)  # one row per step
    summary: dict[str, object] = field(default_factory=dict)
    exit_code: int | None = None  # None: the run never finished (crashed or still running)
    preempting: bool = False  # it called run.mark_preempting(): a sweep requeues it
    program: str | None = None  # the command W&B shows: program and its arguments
    args: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # saved with the run, as named in its files
    output: str = ""  # the console, as W&B's Logs tab shows it (stdout and stderr, in order)


def find_runs(folder: Path) -> list[Path]:
    """Every `.wandb` file under folder, sorted.

    `rglob` does not descend into symlinked folders, so wandb's `latest-run` link does not
    count a run twice.
    """
    return sorted(Path(folder).rglob("*.wandb"))


def read_run(path: Path) -> RunRecords:
    """Read a run from a `.wandb` file, its run folder, or a folder holding exactly one run."""
    path = Path(path)
    if path.is_dir():
        runs = find_runs(path)
        if len(runs) != 1:
            raise ValueError(f"{path}: expected one .wandb file, found {len(runs)}")
        path = runs[0]

    run = RunRecords()
    output: list[str] = []
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, object] = {}
            _update(row, record.history.item)
            # `_step` is always among the items; the step field is a fallback for old writers.
            row.setdefault("_step", record.history.step.num)
            run.history.append(row)
        elif kind == "summary":
            _update(run.summary, record.summary.update)
            _remove(run.summary, record.summary.remove)
        elif kind == "config":
            _update(run.config, record.config.update)
            _remove(run.config, record.config.remove)
        elif kind == "run":
            run.run_id = record.run.run_id or None
            run.group = record.run.run_group or None
            run.sweep_id = record.run.sweep_id or None
            _update(run.config, record.run.config.update)
            _update(run.summary, record.run.summary.update)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "preempting":
            run.preempting = True
        elif kind == "environment" and record.environment.program:
            run.program = record.environment.program
            run.args = list(record.environment.args)
        elif kind == "files":
            run.files += [item.path for item in record.files.files]
        elif kind == "output_raw":
            output.append(record.output_raw.line)
    run.config.pop(_WANDB_KEY, None)
    run.summary.pop(_WANDB_KEY, None)
    run.output = "".join(output)
    return run


def last_values(summary: Mapping[str, object]) -> dict[str, object]:
    """The summary with each metric W&B aggregates (`define_metric(summary="max,last")` keeps
    {"max": ..., "last": ...}) given as its last value, like every other key."""
    return {
        key: value["last"] if isinstance(value, dict) and "last" in value else value
        for key, value in summary.items()
    }


def iter_records(path: Path) -> Iterator[Any]:
    """Yield each `wandb_internal_pb2.Record` of a `.wandb` file, in order."""
    # Imported here: `wandb.proto` pulls in all of wandb (~0.7 s), which commands that never
    # read a run should not pay.
    from wandb.proto import wandb_internal_pb2

    for payload in _payloads(Path(path)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _payloads(path: Path) -> Iterator[bytes]:
    """Reassemble the payloads of the leveldb log, one 32 KiB block at a time."""
    with path.open("rb") as f:
        block = f.read(BLOCK_LEN)
        if len(block) < FILE_HEADER.size:
            raise ValueError(f"{path}: too short for a .wandb file")
        if FILE_HEADER.unpack_from(block) != (FILE_IDENT, FILE_MAGIC, FILE_VERSION):
            raise ValueError(f"{path}: not a .wandb file (bad header)")
        pos = FILE_HEADER.size  # the file header takes the start of the first block
        offset = 0  # file offset of the current block, for error messages
        pending = bytearray()  # a payload split across blocks, until its LAST part
        while block:
            while pos + RECORD_HEADER.size <= len(block):
                crc, length, kind = RECORD_HEADER.unpack_from(block, pos)
                start = pos + RECORD_HEADER.size
                data = block[start : start + length]
                if len(data) < length and len(block) < BLOCK_LEN:
                    # The file ends inside a record: a run still writing, or killed. Everything
                    # before it is whole, so return that rather than fail.
                    return
                if (
                    len(data) < length
                    or kind not in _TYPE_CRC
                    or zlib.crc32(data, _TYPE_CRC[kind]) != crc
                ):
                    raise ValueError(f"{path}: corrupt record at byte {offset + pos}")
                pos = start + length
                if kind == FULL:
                    yield data
                elif kind == FIRST:
                    pending = bytearray(data)
                elif kind == MIDDLE:
                    pending += data
                else:
                    yield bytes(pending + data)
                    pending = bytearray()
            offset += len(block)
            block = f.read(BLOCK_LEN)
            pos = 0


def _keys(item: Any) -> Sequence[str]:
    """The key path of a config, summary or history item: `nested_key` if set, else `key`."""
    return item.nested_key or (item.key,)


def _update(target: dict[str, object], items: Sequence[Any]) -> None:
    """Set each item's JSON value at its key path, making nested dicts on the way."""
    # One json.loads per record, not one per item: several times faster on 50-metric rows.
    values = json.loads("[" + ",".join(item.value_json for item in items) + "]")
    for item, value in zip(items, values, strict=True):
        keys = _keys(item)
        node = target
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value


def _remove(target: dict[str, object], items: Sequence[Any]) -> None:
    """Drop each item's key path, if present."""
    for item in items:
        *parents, last = _keys(item)
        node: object = target
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
