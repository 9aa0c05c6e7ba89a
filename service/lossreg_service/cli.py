"""``lossreg list | show | eval | serve``: the registry and the engine from a terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import pydantic
import typer
from rich.console import Console
from rich.table import Table

from lossreg.errors import LossRegError

from .settings import Settings

app = typer.Typer(
    help="lossreg: a loss registry for PyTorch. Values and gradients of registered losses.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _registry() -> Any:
    return Settings().build_registry()


def _fail(exc: LossRegError) -> typer.Exit:
    err_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
    return typer.Exit(code=1)


def _schema_type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "|".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_schema_type(s) for s in schema["anyOf"])
    return str(schema.get("type", "any"))


def _params_line(spec: Any) -> str:
    props = spec.params_schema.get("properties", {})
    return ", ".join(f"{n}={p.get('default')!r}" for n, p in props.items())


@app.command("list")
def list_(
    pattern: Annotated[
        list[str] | None, typer.Argument(help="Glob patterns, e.g. 'dice*'.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", "-x", help="Globs to drop.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Keep losses with this tag.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the specs as JSON.")] = False,
) -> None:
    """List registered losses with their inputs and parameters."""
    registry = _registry()
    specs = registry.list(pattern or None, exclude=exclude or (), tags=tag or ())
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in specs], indent=2))
        return
    table = Table(title=f"{len(specs)} losses", show_lines=False)
    for column in ("name", "inputs", "parameters", "tags", "origin"):
        table.add_column(column, overflow="fold")
    ambiguous = registry.conflicts
    for spec in specs:
        name = spec.qualified_name if spec.name in ambiguous else spec.name
        inputs = ", ".join(
            f"{t.name}{'*' if t.differentiable else ''}" for t in spec.inputs
        ) + "".join(f", {t.name}?" for t in spec.tensor_params)
        origin = f"{spec.distribution or '-'} {spec.version or ''}".strip()
        if not spec.available:
            table.add_row(
                f"[red]{name}[/red]", "[red]unavailable[/red]", spec.error or "", "", origin
            )
        else:
            table.add_row(name, inputs, _params_line(spec), ", ".join(spec.tags), origin)
    console.print(table)
    console.print("inputs marked * are differentiable, those marked ? are optional tensors")
    for name, owners in ambiguous.items():
        console.print(
            f"[yellow]conflict[/yellow]: {name!r} is exported by {', '.join(owners)}; "
            "use a qualified name"
        )
    for failure in registry.failures:
        console.print(f"[red]unavailable[/red]: {failure.error}")


@app.command()
def show(name: Annotated[str, typer.Argument(help="Loss name, bare or dist:name.")]) -> None:
    """Show one loss: inputs, parameters, doc and origin."""
    registry = _registry()
    try:
        spec = registry.spec(name)
    except LossRegError as exc:
        raise _fail(exc) from None
    console.print(f"[bold]{spec.name}[/bold]  {spec.summary}", highlight=False)
    console.print(
        f"origin: {spec.distribution or '-'} {spec.version or ''}  "
        f"qualified name: {spec.qualified_name}  entry point: {spec.entry_point}",
        highlight=False,
    )
    if not spec.available:
        console.print(f"[red]unavailable[/red]: {spec.error}")
        raise typer.Exit(code=1)
    console.print(f"style: {spec.style}  tags: {', '.join(spec.tags) or '-'}")
    table = Table(title="tensors")
    for column in ("name", "dtypes", "grad", "optional", "shape", "doc"):
        table.add_column(column, overflow="fold")
    for t in spec.inputs + spec.tensor_params:
        table.add_row(
            t.name,
            ", ".join(t.dtypes),
            ("yes" if t.grad_by_default else "if asked") if t.differentiable else "",
            "yes" if t.optional else "",
            t.shape or "",
            t.doc,
        )
    console.print(table)
    params = Table(title="parameters")
    for column in ("name", "type", "default", "constraints"):
        params.add_column(column, overflow="fold")
    for pname, schema in spec.params_schema.get("properties", {}).items():
        parts = [schema, *schema.get("anyOf", [])]  # nullable parameters nest their range
        constraints = ", ".join(
            f"{k}={part[k]}"
            for part in parts
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
            if k in part
        )
        params.add_row(pname, _schema_type(schema), repr(schema.get("default")), constraints)
    console.print(params)
    if spec.doc:
        console.print(spec.doc, markup=False, highlight=False)


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected key=value, got {text!r}", param_hint="--param")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw  # a bare string such as reduction=sum


@app.command("eval")
def eval_(
    name: Annotated[str, typer.Argument(help="Loss name.")],
    tensor: Annotated[
        list[str] | None,
        typer.Option("--tensor", "-T", help="NAME=FILE.npy for any input (repeatable)."),
    ] = None,
    input_: Annotated[Path | None, typer.Option("--input", help=".npy file for 'input'.")] = None,
    target: Annotated[Path | None, typer.Option("--target", help=".npy file for 'target'.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="key=value (JSON values).")
    ] = None,
    grad: Annotated[
        list[str] | None, typer.Option("--grad", help="Inputs to differentiate (default: all).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda:N.")] = "cpu",
) -> None:
    """Evaluate a loss locally (no server) on .npy files; print the value and gradient summary."""
    import numpy as np
    import torch

    from .engine import evaluate, resolve_device

    files: dict[str, Path] = {}
    if input_ is not None:
        files["input"] = input_
    if target is not None:
        files["target"] = target
    for item in tensor or []:
        key, sep, path = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected NAME=FILE.npy, got {item!r}", param_hint="--tensor")
        files[key] = Path(path)
    inputs = {}
    for key, file in files.items():
        try:
            inputs[key] = torch.from_numpy(np.load(file, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{file}: {exc}", param_hint=key) from None
    params = dict(_parse_param(p) for p in param or [])
    try:
        loss = _registry().get(name)
        result = evaluate(loss, inputs, params, grad=grad or None, device=resolve_device(device))
    except LossRegError as exc:
        raise _fail(exc) from None
    value = result.loss
    console.print(
        f"[bold]{loss.spec.qualified_name}[/bold] = "
        + (f"{value.item():.8g}" if value.dim() == 0 else f"tensor of shape {list(value.shape)}")
    )
    table = Table(title="gradients")
    for column in ("input", "shape", "dtype", "norm", "min", "max"):
        table.add_column(column)
    for key, g in result.grads.items():
        g64 = g.double()
        table.add_row(
            key,
            str(list(g.shape)),
            str(g.dtype).removeprefix("torch."),
            f"{g64.norm().item():.6g}",
            f"{g64.min().item():.6g}",
            f"{g64.max().item():.6g}",
        )
    console.print(table)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind [LOSSREG_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [LOSSREG_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [LOSSREG_WORKERS].")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda:N [LOSSREG_DEVICE].")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port, 0: off [LOSSREG_GRPC_PORT].")
    ] = None,
) -> None:
    """Start the HTTP service (KServe v2 + JSON API) with uvicorn, and gRPC beside it."""
    import uvicorn

    # Flags become environment settings so every worker process builds the same Settings.
    flags = (("HOST", host), ("PORT", port), ("WORKERS", workers), ("DEVICE", device))
    for key, value in (*flags, ("GRPC_PORT", grpc_port)):
        if value is not None:
            os.environ[f"LOSSREG_{key}"] = str(value)
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:  # a clear start-up error, not a traceback
        err_console.print(f"[red]error[/red]: invalid LOSSREG_* settings:\n{exc}", highlight=False)
        raise typer.Exit(code=2) from None
    from .server.metrics import multiprocess_dir
    from .server.protocol import uvicorn_options

    with multiprocess_dir():  # whole-server metrics across workers; removed on exit
        uvicorn.run(
            "lossreg_service.server:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            access_log=False,  # lossreg writes one structured line per request (LOSSREG_ACCESS_LOG)
            **uvicorn_options(settings),
        )


if __name__ == "__main__":  # pragma: no cover
    app()
