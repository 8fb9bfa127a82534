"""``clipindex serve``: an HTTP search and classify service (with a web page) over a store."""

from __future__ import annotations

from pathlib import Path

import click

from clipindex.cli._app import echo_err, main
from clipindex.cli.build import storage_option_flag


@main.command("serve")
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset folder of the store, OUT/<dataset>.")
@click.option("--backbone", "backbones", multiple=True,
              help="Backbone to serve (repeatable); default: every finished one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback prints a warning.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to bind.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes (each loads the stores once).")
@click.option("--token", envvar="CLIPINDEX_SERVE_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every route but /health. "
                   "Prefer CLIPINDEX_SERVE_TOKEN or --token-file: every local user sees "
                   "a --token in `ps`.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read the token from this file (its first line).")
@click.option("--allow-host", "allow_hosts", multiple=True,
              help="Also answer requests whose Host header is this name (repeatable; '*' "
                   "for any). Default: the loopback names and the bound address.")
@click.option("--root", "data_root", type=click.Path(file_okay=False), default=None,
              help="Data root of the images (default: the one the store was built from).")
@click.option("--max-k", type=int, default=1000, show_default=True,
              help="Largest k a search may ask for.")
@click.option("--max-upload-mb", type=float, default=10.0, show_default=True,
              help="Largest request body (an uploaded image), in MB.")
@click.option("--max-query-chars", type=int, default=500, show_default=True,
              help="Longest text query.")
@click.option("--reload-interval", type=float, default=1.0, show_default=True,
              help="Seconds between checks of the manifests for a new build (0: every "
                   "request).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="CPU threads one request may use (FAISS, torch); concurrency comes from "
                   "requests in parallel.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow this origin by CORS (repeatable); default: CORS off.")
@storage_option_flag
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info",
                                                 "debug"]), default="info", show_default=True)
@click.pass_context
def serve_command(ctx: click.Context, index_dir: str, backbones: tuple[str, ...], host: str,
                  port: int, workers: int, token: str | None, token_file: Path | None,
                  allow_hosts: tuple[str, ...], data_root: str | None, max_k: int,
                  max_upload_mb: float, max_query_chars: int, reload_interval: float,
                  threads: int, cors_origins: tuple[str, ...], storage_options: dict,
                  log_level: str) -> None:
    """Serve a store over HTTP: search, classify, images, and a web page at /.

    \b
    Examples:
      clipindex serve --index indexes/demo                 # http://127.0.0.1:8000/
      clipindex serve --index indexes/demo --backbone tiny-vit --port 9000
      export CLIPINDEX_SERVE_TOKEN="$(openssl rand -hex 16)"
      clipindex serve --index indexes/demo --host 0.0.0.0 --allow-host search.example.org
    """
    from clipindex.serve import ServeOptions, exposure_warning, run_server

    on_command_line = (token is not None and ctx.get_parameter_source("token")
                       == click.core.ParameterSource.COMMANDLINE)
    token = _token(token, token_file)
    options = ServeOptions(
        index_dir=index_dir, backbones=tuple(backbones), data_root=data_root, token=token,
        max_k=max_k, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_query_chars=max_query_chars, reload_interval=reload_interval, threads=threads,
        cors_origins=tuple(cors_origins), host=host, allow_hosts=tuple(allow_hosts),
        storage_options=tuple((storage_options or {}).items()))
    warning = exposure_warning(host, token)

    def ready() -> None:  # the options and the store passed their checks
        if on_command_line:
            echo_err("Warning: --token is visible to every local user in `ps`; pass it "
                     "in CLIPINDEX_SERVE_TOKEN or --token-file PATH instead")
        if warning:
            echo_err(f"Warning: {warning}")
        echo_err(f"Serving {index_dir} on http://{host}:{port}/ (Ctrl-C or SIGTERM stops it)")

    run_server(options, host=host, port=port, workers=workers, log_level=log_level,
               ready=ready)


def _token(token: str | None, token_file: Path | None) -> str | None:
    """The token from --token / CLIPINDEX_SERVE_TOKEN or from the first line of
    --token-file (not both)."""
    if token_file is None:
        return token
    if token is not None:
        raise click.BadParameter("give the token once: --token (or CLIPINDEX_SERVE_TOKEN) "
                                 "or --token-file, not both", param_hint="--token-file")
    try:
        lines = token_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {token_file}: {exc}",
                                 param_hint="--token-file") from None
    if not lines or not lines[0].strip():
        raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
    return lines[0].strip()
