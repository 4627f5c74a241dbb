"""The server-side router's byte checks and per-list counting (issue 12, perf-routers3) decide exactly as the Python
path does. The script finds an item's ASCII prefix in one anchored match and validates UTF-8 only from the first
byte >= 0x80 on; these items put valid and invalid sequences (truncated, overlong, surrogates, beyond U+10FFFF,
stray continuation bytes) at random places, also after a prefix longer than the old 4000-byte slices, and check
that both paths dead-letter the same entries and route the rest byte for byte. The arrivals hash (counted per
target list, not per entry) must equal what was published on every output, on both paths."""

from __future__ import annotations

import uuid

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import Keys, Settings
from services.core.spec_routers import CopySpec, FilterSpec, RouterSpec, ShardSpec, SplitSpec
from services.router import build_router

STAGE = "rb"
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SEQUENCES = [b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xf4\x8f\xbf\xbf",  # valid: 2, 3, 4 bytes, max
             b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
             b"\xff", b"\xf5\x80\x80\x80", b"\xc3\x28"]  # truncated, overlong, surrogate, > U+10FFFF, stray, ...
PIECES = st.sampled_from(SEQUENCES) | st.text(alphabet="ab -", min_size=1, max_size=6).map(str.encode)
PREFIX = st.sampled_from([0, 1, 3999, 4000, 4001, 9000])


@st.composite
def raw_items(draw: st.DrawFn) -> bytes:
    """A JSON-shaped item whose id and data string carry random byte sequences after an ASCII run."""
    pad = b"x" * draw(PREFIX)
    id_part = b"".join(draw(st.lists(PIECES, max_size=3)))
    value = b"".join(draw(st.lists(PIECES, max_size=4)))
    channel = draw(st.sampled_from([b"sms", b"email", b"push"]))
    return (b'{"id":"i-' + id_part + b'","data":{"pad":"' + pad + b'","ch":"' + channel + b'","v":"' + value
            + b'"}}')


def route(client: redis.Redis, base: Settings, spec: RouterSpec, raws: list[bytes],
          server_side: bool) -> dict[str, object]:
    s = base.model_copy(update={"pipeline": f"p{uuid.uuid4().hex[:10]}"})
    keys = Keys(s.pipeline)
    router = build_router(client, s, STAGE, spec, server_side=server_side)
    assert router.server_side is server_side
    pipe = client.pipeline(transaction=False)
    for raw in raws:
        pipe.xadd(keys.stream("in"), {b"item": raw})
    pipe.execute()
    while router.step(0):
        pass
    outputs = {o: [f[b"item"] for _, f in client.xrange(keys.stream(o))] for o in spec.outputs(STAGE)}
    arrivals = {k.decode(): int(v) for k, v in client.hgetall(keys.arrivals()).items()}
    result = {
        "outputs": outputs,
        "dead": [(f[b"item"], f[b"reason"]) for _, f in client.xrange(keys.dead_letters(STAGE))],
        "arrivals": {o: arrivals.get(keys.stream(o), 0) for o in outputs},
        "published": {o: len(v) for o, v in outputs.items()},
    }
    client.delete(*client.keys(f"{keys.prefix}*"))
    return result


SPECS = [CopySpec(input="in", to=["a", "b"]), FilterSpec(input="in", where="data.ch == 'sms'"),
         SplitSpec(input="in", by="data.ch", routes={"sms": "s", "email": "e"}, default="o"),
         ShardSpec(input="in", key="data.ch", shards=3)]


@EXAMPLES
@given(raws=st.lists(raw_items(), min_size=1, max_size=12), which=st.integers(0, len(SPECS) - 1))
def test_lua_and_python_dead_letter_the_same_bytes_and_count_every_arrival(
    client: redis.Redis, settings: Settings, raws: list[bytes], which: int
) -> None:
    spec = SPECS[which]
    lua, python = (route(client, settings, spec, raws, side) for side in (True, False))
    assert lua["dead"] == python["dead"]
    assert lua["outputs"] == python["outputs"]
    for result in (lua, python):
        assert result["arrivals"] == result["published"]
    valid = [r for r in raws if _utf8(r)]
    assert len(lua["dead"]) == len(raws) - len(valid)  # the only malformation here is the bytes


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
