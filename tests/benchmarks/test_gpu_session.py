"""benchmarks/gpu_session.py: the device session's parts, each a process under its time limit, then the
projection. The parts' scripts are tested on their own (test_gpu_train, test_gpu_encode,
test_eval_projection); here their commands and the session's plumbing, with stand-in parts."""

import json
import sys

from benchmarks import gpu_session


def test_the_parts_run_the_goals_scripts_with_their_settings(tmp_path):
    args = gpu_session.parse_args(["--out", str(tmp_path)])
    commands = {name: (" ".join(command), limit) for name, command, limit in gpu_session.parts(args)}
    assert list(commands) == ["loop", "gc", "encode"]
    loop, gc, encode = (commands[n][0] for n in ("loop", "gc", "encode"))
    assert "gpu_train.py" in loop and "--variants eager,plain,cuda-graphs,eager-one-batch" in loop and "--layers 8" in loop
    assert "--variants gc-blocks,gc-plain" in gc and "--gc-batch 1024 --gc-chunk 64" in gc
    assert "gpu_encode.py" in encode and "--compile none" in encode and "--tiny" not in encode
    assert sum(limit for _, limit in commands.values()) <= 540  # within a 10-minute call, projection included
    assert all(f"--out {tmp_path}/{name}.json" in c for name, (c, _) in commands.items())


def test_a_part_past_its_limit_is_killed_and_the_encode_json_is_projected(tmp_path, monkeypatch):
    rows = [dict(cls=c, path="evaluate", items_per_s=50.0, status="ok")
            for c in ("v1-image", "v1-text", "v2-page", "v2-video")]
    encode = json.dumps(dict(meta=dict(device="stand-in"), rows=rows))
    monkeypatch.setattr(gpu_session, "parts", lambda args: [
        ("loop", [sys.executable, "-c", "import time; time.sleep(30)"], 1),
        ("encode", [sys.executable, "-c", f"open({str(tmp_path / 'encode.json')!r}, 'w').write({encode!r})"], 30)])
    assert gpu_session.main(["--out", str(tmp_path)]) == 1
    session = json.loads((tmp_path / "session.json").read_text())
    status = {p["part"]: p["status"] for p in session["parts"]}
    assert status == {"loop": "killed at its limit of 1 s", "encode": "ok", "project-evaluate": "ok", "project-best": "ok"}
    projection = json.loads((tmp_path / "projection_evaluate.json").read_text())
    assert projection["device"] == "stand-in" and projection["v1"]["low"]["total_s"] > 0
    assert "===== loop" in (tmp_path / "session.log").read_text()
