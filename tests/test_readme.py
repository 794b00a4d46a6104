"""Every python snippet of the README runs as written, in order, in one namespace; the quickstart
lands near Aoyagi's λ."""

import pathlib
import re

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def test_readme_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    quickstart = README.split("## Quickstart", 1)[1]
    assert blocks and quickstart.lstrip().startswith("```python"), "the quickstart must open with a python snippet"
    namespace = {}
    for index, code in enumerate(blocks):
        exec(compile(code, f"README.md python snippet {index}", "exec"), namespace)
        if index == 0:
            result = namespace["result"]
            assert abs(result.llc_mean - 47.0) / 47.0 < 0.10, result
            assert "LLCResult" in capsys.readouterr().out
    assert namespace["table"].llc_mean.shape == (3, 3)
    assert namespace["chains"].loss.shape == (2, 2, 50)
