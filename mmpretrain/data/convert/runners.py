"""Which Beam runner executes a conversion, and its pipeline options.

`local` (the default) is Beam's own runner in this process tree: `source.workers` worker
processes, nothing to set up. Any other Beam runner runs the same pipeline on a cluster,
with the options given after `--` on the command line (docs/data.md has the recipes).
"""
import dataclasses
import importlib.util
import logging
import shutil

# runner -> (modules it imports, what provides them)
_REQUIREMENTS = {
    "DataflowRunner": (("google.cloud.storage", "google.auth", "apitools"),
                       "pip install 'mmpretrain[dataflow]' (apache-beam[gcp])"),
    "FlinkRunner": ((), ""),
    "SparkRunner": ((), ""),
    "PortableRunner": ((), ""),
    "DirectRunner": ((), ""),
    "PrismRunner": ((), ""),
}
RUNNERS = ("local",) + tuple(_REQUIREMENTS)
# Runners that start a Java job server unless given the endpoint of a running one.
_JOB_SERVER = {"FlinkRunner": "--flink_master", "SparkRunner": "--spark_master_url"}


@dataclasses.dataclass(frozen=True)
class Runner:
  """A Beam runner by name and the pipeline options passed through to it."""
  name: str = "local"
  args: tuple[str, ...] = ()

  def describe(self, workers: int) -> str:
    return f"runner {self.name}" + (f" ({workers} workers)" if self.name == "local" else "")


def check_runner(runner: str, args: list[str]) -> None:
  """Refuses a runner that is unknown or whose packages are missing, by name."""
  if runner not in RUNNERS:
    raise ValueError(f"unknown runner {runner!r}: use one of {', '.join(RUNNERS)}")
  if runner == "local":
    return
  modules, hint = _REQUIREMENTS[runner]
  missing = [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None
             or importlib.util.find_spec(m) is None]
  if missing:
    raise ValueError(f"--runner={runner} needs {', '.join(missing)}: {hint}")
  given = {a.split("=", 1)[0] for a in args}
  if runner in _JOB_SERVER and "--job_endpoint" not in given and not shutil.which("java"):
    raise ValueError(f"--runner={runner} starts Beam's Java job server: install Java "
                     "(apt-get install default-jre), or pass `-- --job_endpoint=HOST:PORT` "
                     f"of a running one ({_JOB_SERVER[runner]}=… names the cluster)")
  if runner == "PortableRunner" and "--job_endpoint" not in given:
    raise ValueError("--runner=PortableRunner needs `-- --job_endpoint=HOST:PORT`")


def pipeline_options(runner: str, args: list[str], workers: int):
  """The options of one conversion: the local runner with `workers` processes, or
  `runner` with the user's pass-through `args`."""
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  check_runner(runner, args)
  # The local job service re-logs every worker's start-up warnings; errors still show.
  logging.getLogger("apache_beam").setLevel(logging.ERROR)
  if runner != "local":
    return PipelineOptions([f"--runner={runner}", *args])
  local = ["--runner=DirectRunner", "--direct_num_workers", str(workers),
           "--default_sdk_harness_log_level=WARNING"]
  mode = "multi_processing" if workers > 1 else "in_memory"
  return PipelineOptions([*local, f"--direct_running_mode={mode}", *args])
