"""The dashboard's files, without a browser: what the gateway serves them as,
and rules the code must keep (tests/test_dashboard.py drives it in Chromium).

- Every file index.html names, and every module those import, is served, as
  JavaScript or CSS, with the Content-Security-Policy and revalidated on each
  load (so an upgrade never mixes cached old modules with new ones).
- Nothing comes from another origin, nothing runs inline, and no script
  writes HTML: job names, specs and logs are hostile input, so every string
  reaches the page as text.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

from baton.gateway.server import STATIC_DIR, GatewayConfig, start

IMPORT = re.compile(r"""^import\s[^;]*?from\s+"(\./[^"]+)";""", re.MULTILINE | re.DOTALL)
# Ways to turn a string into markup or code.
SINKS = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
         "createContextualFragment", "DOMParser", "srcdoc")  # fmt: skip


def _named_by_index() -> list[str]:
    html = (STATIC_DIR / "index.html").read_text()
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', html)


def _modules() -> set[str]:
    """app.js and every module it imports, transitively."""
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [m.removeprefix("./") for m in IMPORT.findall((STATIC_DIR / name).read_text())]
    return seen


def test_every_asset_is_served_typed_under_the_policy_and_revalidated() -> None:
    named = _named_by_index()
    assert "/static/app.js" in named and "/static/style.css" in named
    paths = {"/", *named, *(f"/static/{m}" for m in _modules())}
    # The services are never called: the static files need none.
    config = GatewayConfig(listen="127.0.0.1:0", conductor="127.0.0.1:9", viewer="127.0.0.1:9")

    async def fetch_all() -> dict[str, tuple[int, str, str, str]]:
        gateway = await start(config)
        try:
            async with aiohttp.ClientSession() as session:
                out = {}
                for path in sorted(paths):
                    async with session.get(f"http://{gateway.address}{path}") as r:
                        await r.read()
                        out[path] = (r.status, r.content_type, r.headers.get("Cache-Control", ""),
                                     r.headers.get("Content-Security-Policy", ""))  # fmt: skip
                return out
        finally:
            await gateway.stop()

    answers = asyncio.run(fetch_all())
    for path, (status, content_type, cache, policy) in answers.items():
        assert status == 200, path
        assert "no-cache" in cache, path
        assert "default-src 'self'" in policy, path
        if path.endswith(".js"):
            assert "javascript" in content_type, (path, content_type)  # module scripts need it (nosniff)
        elif path.endswith(".css"):
            assert content_type == "text/css", path
    assert answers["/"][1] == "text/html"


def test_no_inline_code_no_other_origin_and_no_script_writes_markup() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert re.search(r"<script(?![^>]*\ssrc=)", html) is None, "inline <script>"
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None, "an inline event handler"
    files = sorted(STATIC_DIR.iterdir())
    assert {f.name for f in files} >= {"index.html", "app.js", "style.css"}
    for path in files:
        # An SVG names its XML namespace by URL; that fetches nothing.
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text) is None, f"{path.name}: elsewhere"
        if path.suffix == ".js":
            for sink in SINKS:
                assert sink not in text, f"{path.name} uses {sink}: write text (textContent), not markup"
            assert re.search(r"""setAttribute\(\s*["'](?:on|style)""", text) is None, path.name


def test_the_modules_import_only_each_other() -> None:
    for name in _modules():
        text = (STATIC_DIR / name).read_text()
        for spec in re.findall(r"""\bfrom\s+["']([^"']+)["']""", text):
            assert spec.startswith("./") and (STATIC_DIR / spec[2:]).is_file(), (name, spec)
