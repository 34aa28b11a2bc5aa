"""The command line: help for every verb, flags refused where they do nothing, and every
`mmpretrain` command in the README and docs still names real verbs, flags and config keys."""
import glob
import os
import re
import shlex

import pytest

from mmpretrain import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(capsys, *args):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["mmpretrain", *args])
  out = capsys.readouterr()
  return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_lists_every_verb(capsys, flag):
  code, out, _ = run_main(capsys, flag)
  assert code == 0
  for verb in cli.VERBS:
    assert re.search(rf"^  {re.escape(verb)} +\S", out, re.M), verb


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_each_verb_explains_itself(capsys, verb):
  code, out, _ = run_main(capsys, verb, "--help")
  assert code == 0
  assert out.startswith(f"usage: mmpretrain {verb} ")
  flags_shown = re.findall(r"^  --([a-z_]+)(?: \(|$)", out, re.M)
  assert flags_shown == list(cli.VERBS[verb].flags)
  assert f"example:\n  mmpretrain {verb} " in out
  assert "sample:" not in out          # help strings lose the verb names they carry


def test_a_flag_of_another_verb_is_refused_naming_its_verb(capsys):
  code, _, err = run_main(capsys, "train", "--config=configs/demo.py", "--caption=x")
  assert code == 2
  assert "--caption is a flag of `mmpretrain sample`" in err
  code, _, err = run_main(capsys, "eval", "--config=configs/demo.py", "--noactions")
  assert code == 2 and "--actions is a flag of `mmpretrain sample`" in err


def test_an_unknown_verb_is_refused_with_the_list(capsys):
  code, _, err = run_main(capsys, "trian")
  assert code == 2 and "no verb 'trian'" in err and "train-encoder" in err


def documented_commands():
  """Every `mmpretrain VERB …` line of the README's and docs' code blocks (continuation
  lines joined), as (file, argv)."""
  for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(f"{ROOT}/docs/*.md"))]:
    with open(path, encoding="utf-8") as f:
      blocks = re.findall(r"^```[a-z]*\n(.*?)^```", f.read(), re.M | re.S)
    for block in blocks:
      for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        match = re.match(r"(?:\.venv/bin/)?mmpretrain ([a-z-]+)(.*)", line)
        if match and not line.startswith("mmpretrain train: error"):
          words = shlex.split(match.group(2))
          words = words[:words.index("--")] if "--" in words else words   # Beam's options
          args = [a for a in words if a.startswith("--")]
          yield os.path.relpath(path, ROOT), [match.group(1), *args]


COMMANDS = list(documented_commands())


def test_the_docs_have_commands_to_check():
  verbs = {argv[0] for _, argv in COMMANDS}
  assert {"prepare", "train", "sample", "sweep", "fit"} <= verbs


@pytest.mark.parametrize("source, argv", COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_documented_commands_name_real_verbs_flags_and_keys(source, argv):
  verb, args = argv[0], argv[1:]
  assert verb in cli.VERBS, f"{source}: no verb {verb}"
  args = [a.strip("[]") for a in args]
  cli._check_verb_flags(verb, args)               # pylint: disable=protected-access
  for arg in args:
    name = cli._flag_name(arg)                    # pylint: disable=protected-access
    assert name in cli.VERBS[verb].flags or name.startswith("config."), f"{source}: {arg}"
  config = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), "")
  if os.path.exists(os.path.join(ROOT, config.split(":")[0])):
    old = os.getcwd()
    os.chdir(ROOT)
    try:
      cli._check_override_keys(args)              # pylint: disable=protected-access
    finally:
      os.chdir(old)


def test_only_prepare_passes_options_after_a_double_dash(capsys):
  code, out, _ = run_main(capsys, "prepare", "--help")
  assert code == 0 and "DataflowRunner" in out and "`--`" in out
  code, _, err = run_main(capsys, "train", "--config=configs/demo.py", "--", "--project=p")
  assert code == 2 and "only `mmpretrain prepare` takes options after `--`" in err
  code, _, err = run_main(capsys, "prepare", "--config=configs/demo.py", "--runner=Quick")
  assert code == 2 and "unknown runner 'Quick'" in err


def test_an_override_without_a_config_file_is_refused(capsys):
  code, _, err = run_main(capsys, "eval", "--workdir=runs/x", "--config.model.d_model=3")
  assert code == 2 and "--config.model.d_model overrides a key of a config file" in err
