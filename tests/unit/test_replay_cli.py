"""``systerns replay`` refuses bad bounds and labels before touching Kafka."""

from __future__ import annotations

import pytest

from systerns.cli.replay import main


@pytest.mark.parametrize(("extra", "says"), [
    (["--from", "yesterday"], "--from 'yesterday'"),
    (["--to", "offset:ten"], "--to 'offset:ten'"),
    (["--labels", "{bad"], "--labels"),
    (["--labels", "list"], "expected"),
    (["--from", "offset:50", "--to", "offset:10"], "empty range"),
])
def test_bad_replay_arguments_are_usage_errors(extra, says, tmp_path, capsys):
    if extra[0] == "--labels":
        path = tmp_path / "labels.json"
        path.write_text("[1, 2]" if extra[1] == "list" else extra[1])
        extra = ["--labels", str(path)]
    with pytest.raises(SystemExit) as exc:
        main(["--model-version", "3", *extra])
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
