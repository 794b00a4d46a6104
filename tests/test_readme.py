"""The README's quickstart runs as written and lands near Aoyagi's λ."""

import pathlib
import re


def test_quickstart_runs(capsys):
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", quickstart, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md quickstart", "exec"), namespace)
    result = namespace["result"]
    assert abs(result.llc_mean - 47.0) / 47.0 < 0.10
    assert "LLCResult" in capsys.readouterr().out
