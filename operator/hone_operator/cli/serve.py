"""``hone serve`` and ``hone chat``: the built-in server on this machine, and a client for any OpenAI API."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hone_operator.cli.common import fail, first_document, local_job, parse_manifest, require_runtime


@click.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--job", "job_manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Serve the result of this FineTuneJob manifest instead of a ModelServing.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@click.option("--api-keys-file", type=click.Path(dir_okay=False, exists=True),
              help="Accepted API keys, one per line (default: no key needed).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".hone/run"),
              show_default=True, help="Where `hone run` keeps its results.")
@click.option("--serve-despite-failed-safety-check", "override_safety", is_flag=True,
              help="Serve a fine-tune whose safety check failed (in a cluster: the FineTuneJob's annotation "
                   "hone.dev/serve-despite-failed-safety-check=true).")
def serve(manifest: Path | None, job_manifest: Path | None, host: str, port: int, api_keys_file: str | None,
          workdir: Path, override_safety: bool) -> None:
    """Serve a ModelServing manifest (or --job JOB.yaml) on this machine with the built-in server.

    Its FineTuneJobs resolve to what `hone run` published for them. The server
    speaks OpenAI's API at http://HOST:PORT/v1 (chat/completions, completions,
    models) and exposes /metrics, /health and /ready; stop it with Ctrl-C.
    """
    import logging

    from hone_operator import local
    from hone_operator import settings as settings_mod
    from hone_operator.api.v1alpha1 import ModelServing

    if (manifest is None) == (job_manifest is None):
        fail("give a ModelServing manifest or --job JOB.yaml (one of them)")
    require_runtime("serve", "hone_trainer.serving.loading")
    from hone_trainer.serving import loading
    from hone_trainer.serving.app import serve as run_server
    if job_manifest is not None:
        job = local_job(job_manifest)
        msv = ModelServing.model_validate({"metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace},
                                           "spec": {"fineTuneJobRef": {"name": job.metadata.name}}})
        source = job_manifest
    else:
        assert manifest is not None
        msv = parse_manifest(manifest, first_document(manifest, "ModelServing"), "local")
        source = manifest
        if msv.spec.apiKeySecret is not None and not api_keys_file:
            click.echo("note: spec.apiKeySecret names a Secret, which exists only in a cluster; locally no key is "
                       "needed unless you pass --api-keys-file", err=True)
        if msv.spec.runtime == "vllm":
            click.echo("note: runtime vllm is for GPU clusters; serving with the built-in server here", err=True)
    try:
        config = local.server_config(msv, source, workdir, host, port, api_keys_file)
        for warning in local.safety_gate(config, override_safety):
            click.echo(f"warning: {warning}", err=True)
        base_uri = msv.spec.baseModel.uri if msv.spec.baseModel is not None else \
            (job.spec.baseModel.uri if job_manifest is not None else "")
        config = config.model_copy(update={"prices": settings_mod.load().prices_for(base_uri)})
    except local.LocalSpecError as exc:
        fail(f"{source}: {exc}")
    except loading.ServingError as exc:
        fail(f"{source}: {exc}", 5)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    click.echo(f"Loading {config.base_model.location}"
               + "".join(f" + {a.name or a.location}" for a in config.adapters)
               + f"; the API will be at http://{host}:{port}/v1 (Ctrl-C stops)")
    sys.exit(run_server(config))


@click.command()
@click.argument("model")
@click.argument("message", required=False)
@click.option("--url", default="http://127.0.0.1:8000/v1", show_default=True, envvar="HONE_URL",
              help="Base URL of an OpenAI-compatible API (env HONE_URL).")
@click.option("--api-key", envvar="OPENAI_API_KEY", default="", help="API key (env OPENAI_API_KEY).")
@click.option("--system", "system_prompt", help="A system message to start the conversation with.")
@click.option("--max-tokens", default=256, show_default=True, help="Longest answer, in tokens.")
@click.option("--temperature", default=0.0, show_default=True, help="0 answers deterministically.")
def chat(model: str, message: str | None, url: str, api_key: str, system_prompt: str | None, max_tokens: int,
         temperature: float) -> None:
    """Ask MODEL a question (one-shot with MESSAGE, else an interactive chat) through /v1/chat/completions.

    Works against `hone serve`, a ModelServing's Service (kubectl port-forward)
    or any OpenAI-compatible endpoint. Prints the answer as it streams, then
    the tokens it used.
    """
    from hone_operator.chat_client import ChatError, stream_chat

    history = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def ask(text: str) -> bool:
        history.append({"role": "user", "content": text})
        try:
            answer, usage, finish = stream_chat(url, api_key, model, history, max_tokens, temperature,
                                                lambda piece: click.echo(piece, nl=False))
        except ChatError as exc:
            click.echo(f"hone: error: {exc}", err=True)
            history.pop()
            return False
        history.append({"role": "assistant", "content": answer})
        click.echo(" [...]" if finish == "length" else "")
        if finish == "length":
            click.echo(f"[the answer was cut at --max-tokens {max_tokens}; raise it for a longer one]", err=True)
        if usage:
            click.echo(f"[{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens]", err=True)
        return True

    if message is not None:
        sys.exit(0 if ask(message) else 1)
    click.echo(f"Chatting with {model} at {url}; an empty line or Ctrl-D ends.", err=True)
    while True:
        try:
            text = input("> ")
        except (EOFError, KeyboardInterrupt):
            break
        if not text.strip():
            break
        ask(text)
