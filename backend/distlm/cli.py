"""``distlm``: the DistLM command line, on the Python client.

Exit codes: 0 success (a watched job succeeded), 1 the job failed or an error, 2 the job was
cancelled, 3 not enough tokens (402), 4 not logged in or the token was rejected (401).
Every command takes ``--json`` (machine-readable output on stdout), before or after its
name; progress and prompts go to stderr. ``distlm completion bash|zsh|fish`` prints the
shell completion script.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from distlm.client import Client, Job, load_spec
from distlm.errors import APIError, InsufficientTokensError, NotAuthenticatedError
from distlm.spec_flags import spec_from_flags

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_NO_TOKENS, EXIT_AUTH = 0, 1, 2, 3, 4
DEFAULT_URL = "http://localhost:8000"
EXIT_CODES = """\b
Exit codes: 0 success (a watched job succeeded), 1 the job failed or an error,
2 the job was cancelled, 3 not enough tokens, 4 not logged in or token rejected."""


def config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "distlm" / "credentials.json"


def saved() -> dict[str, Any]:
    try:
        return json.loads(config_path().read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save(url: str, token: str, refresh: str | None) -> None:
    """The tokens, readable by this user only (0600 from the moment the file exists)."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.chmod(partial, 0o600)
        json.dump({"url": url, "access_token": token, "refresh_token": refresh}, out)
    os.replace(partial, path)


def client_from(ctx: click.Context) -> Client:
    stored = saved()
    url = ctx.obj.get("url") or os.environ.get("DISTLM_URL") or stored.get("url") or DEFAULT_URL
    token = os.environ.get("DISTLM_TOKEN")
    if token:  # an explicit token: used as is, nothing saved
        return Client(url, token=token)
    if not stored.get("access_token"):
        fail("not logged in: run `distlm login` (or set DISTLM_TOKEN)", EXIT_AUTH)
    return Client(
        url,
        token=stored["access_token"],
        refresh_token=stored.get("refresh_token"),
        on_tokens=lambda access, refresh: save(url, access, refresh),
    )


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def out(ctx: click.Context, value: Any, text: str | None = None) -> None:
    if ctx.obj.get("json"):
        click.echo(json.dumps(value, indent=2, default=str))
    else:
        click.echo(text if text is not None else json.dumps(value, indent=2, default=str))


class DistLMGroup(click.Group):
    """Turns the API's errors into their exit codes and one line on stderr, and takes
    ``--json`` after a command's name as well as before it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--json" in args[:end]:
            args = ["--json", *(a for a in args[:end] if a != "--json"), *args[end:]]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InsufficientTokensError as error:
            fail(error.detail, EXIT_NO_TOKENS)
        except NotAuthenticatedError as error:
            fail(f"{error.detail} (run `distlm login`)", EXIT_AUTH)
        except APIError as error:
            fail(f"{error.detail} ({error.code})")
        except httpx.TransportError as error:  # refused, unresolvable, timed out
            fail(f"cannot reach the gateway{_where(error)}: {error or type(error).__name__}")
        except (FileNotFoundError, ValueError) as error:
            fail(str(error))


def _where(error: httpx.TransportError) -> str:
    try:
        url = error.request.url
    except RuntimeError:  # an error raised before any request was made
        return ""
    return f" at {url.scheme}://{url.netloc.decode()}"


@click.group(cls=DistLMGroup, epilog=EXIT_CODES)
@click.option("--url", help=f"the gateway (default: $DISTLM_URL, the saved one, {DEFAULT_URL})")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@click.pass_context
def main(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Submit and watch training jobs on a DistLM gateway."""
    ctx.ensure_object(dict)
    ctx.obj.update(url=url, json=as_json)


@main.command()
@click.option("--username", prompt=True)
@click.option("--password", prompt=True, hide_input=True)
@click.pass_context
def login(ctx: click.Context, username: str, password: str) -> None:
    """Log in; the tokens are kept in ~/.config/distlm/credentials.json (mode 0600)."""
    url = ctx.obj.get("url") or os.environ.get("DISTLM_URL") or saved().get("url") or DEFAULT_URL
    with Client(url) as client:
        body = client.login(username, password)
        save(url, body["access_token"], body.get("refresh_token"))
        me = client.me()
    click.echo(f"logged in to {url} as {me['username']} ({me['role']})", err=True)


@main.command()
def logout() -> None:
    """Revoke the saved login and forget it."""
    stored = saved()
    if stored.get("refresh_token"):
        with Client(stored.get("url") or DEFAULT_URL, refresh_token=stored["refresh_token"]) as c:
            c.logout()
    config_path().unlink(missing_ok=True)
    click.echo("logged out", err=True)


@main.command()
@click.pass_context
def whoami(ctx: click.Context) -> None:
    """Who the saved login (or DISTLM_TOKEN) is."""
    with client_from(ctx) as client:
        me = client.me()
        out(ctx, me, f"{me['username']} ({me['role']}) at {client.url}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False), required=False)
@click.option("--yes", is_flag=True, help="submit without asking")
@click.option("--watch", "follow", is_flag=True, help="follow the job to its end")
@click.option("--model-type", help="simple_transformer, char_rnn, classifier or text_to_text")
@click.option("--model", help="a preset (tiny-gpt2, rnn, mlp, ...), a hub id or job:<id>")
@click.option("--dataset", help="a built-in dataset (digits, stdlib-text, ...) or a hub id")
@click.option("--data-path", help="a file under the data root (makes the data local)")
@click.option("--strategy", help="data_parallel, fedavg, es or split (default: the model's)")
@click.option("--steps", type=int, help="steps, or rounds for fedavg")
@click.option("--workers", type=int, help="training_config.num_workers")
@click.option("--gpu", type=int)
@click.option("--cpu-cores", type=float)
@click.option("--memory", type=float, help="GB")
@click.option("--max-tokens", type=float, help="the most the job may cost")
@click.option("--name")
@click.pass_context
def submit(ctx: click.Context, spec: str | None, yes: bool, follow: bool, **flags: Any) -> None:
    """Submit a job from SPEC.json, from flags, or both (flags win): shows its cost and your
    balance and asks first (--yes skips)."""
    with client_from(ctx) as client:
        given = {key: value for key, value in flags.items() if value is not None}
        body = load_spec(spec) if spec else {}
        if given or not spec:
            body = spec_from_flags(body, **flags)
        cost = client.estimate(body)["total"]
        available = client.balance()["available"]
        click.echo(f"holds up to {cost} tokens; you have {available} available", err=True)
        if cost > available:
            fail(f"not enough tokens: the job needs {cost}, you have {available} "
                 f"(short by {round(cost - available, 6)})", EXIT_NO_TOKENS)  # fmt: skip
        if not yes and not click.confirm("submit?", err=True):
            fail("not submitted", EXIT_FAILED)
        job = client.submit(body)
        click.echo(f"submitted job {job.id}", err=True)
        if follow:
            finish(ctx, job.wait(progress=True))
        out(ctx, job.data, str(job.id))


def money_line(job: dict[str, Any]) -> str:
    """ "charged 0.0123 tokens (refunded 0.0877 of a hold of 0.1)" once settled."""
    if job.get("charged") is None:
        pending = job.get("pending_credit") or 0
        return (
            f"cost so far {job.get('cost_so_far') or 0:.6g} of a hold of {job.get('hold') or 0:.6g}"
            + (f" ({pending:.6g} pending for the nodes' owners)" if pending else "")
        )
    earned = ", ".join(f"node {e['node_id']} {e['tokens']:.6g}" for e in job.get("earnings", []))
    voided = job.get("voided") or 0
    return (
        f"charged {job['charged']:.6g} tokens (refunded {job['refunded']:.6g} of a hold of "
        f"{job['hold']:.6g})"
        + (f"; voided {voided:.6g}" if voided else "")
        + (f"; earned by {earned}" if earned else "")
    )


def finish(ctx: click.Context, job: Job) -> NoReturn:
    """The job's end: its final metrics, and the exit code its status gives."""
    points = [p for p in job.metrics() if p["step"] > 0]
    final = points[-1]["values"] if points else {}
    if ctx.obj.get("json"):
        click.echo(json.dumps({"job": job.data, "final_metrics": final}, indent=2, default=str))
    else:
        click.echo(f"job {job.id} {job.status}: {job.reason}")
        click.echo(f"  {money_line(job.data)}")
        for key, value in final.items():
            if isinstance(value, int | float):
                click.echo(f"  {key}: {value:.6g}")
    codes = {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}
    sys.exit(codes.get(job.status, EXIT_FAILED))


@main.command()
@click.option("--status", help="queued, scheduled, running, succeeded, failed, cancelled")
@click.pass_context
def jobs(ctx: click.Context, status: str | None) -> None:
    """Your jobs, newest first."""
    with client_from(ctx) as client:
        found = client.jobs(status)
        lines = [f"{j.id:>6}  {j.status:<10}  {j.data['name'][:40]:<40}  {j.reason}" for j in found]
        out(ctx, [j.data for j in found], "\n".join(lines) or "no jobs")


@main.command()
@click.argument("job_id", type=int)
@click.pass_context
def status(ctx: click.Context, job_id: int) -> None:
    """One job's status."""
    with client_from(ctx) as client:
        job = client.job(job_id)
        out(ctx, job.data, f"job {job.id} {job.status}: {job.reason}")


@main.command()
@click.argument("job_id", type=int)
@click.pass_context
def watch(ctx: click.Context, job_id: int) -> None:
    """A live progress bar until the job ends; the exit code says how it ended."""
    with client_from(ctx) as client:
        finish(ctx, client.job(job_id).wait(progress=True))


@main.command()
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="go on printing new lines until the job ends")
@click.pass_context
def logs(ctx: click.Context, job_id: int, follow: bool) -> None:
    """The job's log lines."""
    with client_from(ctx) as client:
        if not follow:
            lines = client.logs(job_id)
            text = "\n".join(f"{x['at']} [{x['source']}] {x['message']}" for x in lines)
            out(ctx, lines, text)
            return
        for event in client.events(job_id):
            if event["event"] == "log":
                line = event["data"]
                click.echo(json.dumps(line) if ctx.obj.get("json") else
                           f"{line['at']} [{line['source']}] {line['message']}")  # fmt: skip


@main.command()
@click.argument("job_id", type=int)
@click.pass_context
def cancel(ctx: click.Context, job_id: int) -> None:
    """Cancel a job (queued: refunded at once; running: stopped and charged what it used)."""
    with client_from(ctx) as client:
        job = client.cancel(job_id)
        out(ctx, job.data, f"job {job.id}: {job.reason}")


@main.command()
@click.argument("job_id", type=int)
@click.option("--results", is_flag=True, help="the results of a validate/infer job")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet", "json"]),
    help="results: json for validate; jsonl (default) or parquet for infer, or by -o's suffix",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="where to write")
@click.pass_context
def download(
    ctx: click.Context, job_id: int, results: bool, fmt: str | None, output: str | None
) -> None:
    """Download a job's model (.tar.gz) or, with --results, its results."""
    with client_from(ctx) as client:
        job = client.job(job_id)
        if results or fmt:
            fmt = fmt or results_format(job.data, output)
            path = job.download_results(output or f"job-{job_id}-results.{fmt}", fmt)
        else:
            path = job.download_model(output or f"job-{job_id}-model.tar.gz")
        click.echo(f"wrote {path}", err=True)


def results_format(job: dict[str, Any], output: str | None) -> str:
    """A validate job's results are JSON; an infer job's JSON Lines, or Parquet when the
    file asked for is a .parquet."""
    if (job.get("spec") or {}).get("task") == "validate":
        return "json"
    suffix = Path(output).suffix.lower() if output else ""
    return "parquet" if suffix == ".parquet" else "jsonl"


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script: `eval "$(distlm completion bash)"` in ~/.bashrc."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(main, {}, "distlm", "_DISTLM_COMPLETE").source())


@main.group(invoke_without_command=True)
@click.pass_context
def nodes(ctx: click.Context) -> None:
    """Your nodes (admins: every node); `nodes approve|ban ID` (admin)."""
    if ctx.invoked_subcommand is not None:
        return
    with client_from(ctx) as client:
        found = client.nodes()
        lines = [
            f"{n['id']:>4}  {n['hostname']:<24} {n['status']:<12} {n['approval']}" for n in found
        ]
        out(ctx, found, "\n".join(lines) or "no nodes")


@nodes.command("approve")
@click.argument("node_id", type=int)
@click.pass_context
def node_approve(ctx: click.Context, node_id: int) -> None:
    """Approve a node (admin)."""
    with client_from(ctx) as client:
        found = client.approve_node(node_id)
        out(ctx, found, f"node {node_id} {found['approval']}")


@nodes.command("ban")
@click.argument("node_id", type=int)
@click.pass_context
def node_ban(ctx: click.Context, node_id: int) -> None:
    """Ban a node (admin)."""
    with client_from(ctx) as client:
        found = client.ban_node(node_id)
        out(ctx, found, f"node {node_id} {found['approval']}")


@main.command()
@click.pass_context
def balance(ctx: click.Context) -> None:
    """Your tokens: available, held, earned, pending (earned, not yet released), spent."""
    with client_from(ctx) as client:
        b = client.balance()
        out(ctx, b, f"available {b['available']}  held {b['held']}  earned {b['earned']}  "
                    f"pending {b.get('pending', 0)}  spent {b['spent']}")  # fmt: skip


@main.command()
@click.option("--all", "everything", is_flag=True, help="the escrows' legs too")
@click.pass_context
def history(ctx: click.Context, everything: bool) -> None:
    """Your wallet's movements (grants, holds, refunds, earnings), newest first."""
    with client_from(ctx) as client:
        entries = client.history(account="all" if everything else "wallet")
        lines = [
            f"{e['created_at']}  {e['kind']:<12} {e['amount']:>12}  job {e['job_id'] or '-':<6} "
            f"{e['memo']}"
            for e in entries
        ]
        out(ctx, entries, "\n".join(lines))


@main.group()
def users() -> None:
    """Accounts (admin)."""


@users.command("add")
@click.argument("username")
@click.option("--role", default="user", type=click.Choice(["user", "node_owner", "admin"]))
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.pass_context
def users_add(ctx: click.Context, username: str, role: str, password: str) -> None:
    """Create an account."""
    with client_from(ctx) as client:
        user = client.add_user(username, password, role)
        out(ctx, user, f"created {user['username']} (id {user['id']}, {user['role']})")


@main.command()
@click.argument("user_id", type=int)
@click.argument("amount", type=float)
@click.option("--memo", default="")
@click.pass_context
def grant(ctx: click.Context, user_id: int, amount: float, memo: str) -> None:
    """Issue AMOUNT tokens to a user (admin)."""
    with client_from(ctx) as client:
        out(ctx, client.grant(user_id, amount, memo), f"granted {amount} tokens to user {user_id}")


if __name__ == "__main__":
    main()
