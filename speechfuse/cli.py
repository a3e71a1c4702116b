"""What the launch scripts share: absl flag parsing whose config errors are one line, the quiet console, and
one-line errors for bad input.

A wrong recipe argument (an unknown size, a misspelled key) or an override of a key that does not exist ends the
run with one line naming it, before anything is built (`parse_flags`); `start` routes the libraries' INFO lines
to the run's log file (speechfuse.logs) unless --verbosity is given; `run_reporting` turns the errors bad input
raises (a missing file or checkpoint, a record or config that contradicts itself) into one line on the console,
the traceback going to the log file.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from absl import flags, logging

from speechfuse import config as config_lib, logs


def _check_config_spec(args: Sequence[str], flag: str) -> None:
  """Loads the recipe named by --<flag>=<file>:<arg> once, so that its errors read as one line (absl would wrap
  them in a traceback)."""
  spec = next((arg.split("=", 1)[1] for arg in reversed(args) if arg.startswith(f"--{flag}=")), None)
  if spec is None:
    return
  try:
    config_lib.load_config(spec)
  except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
    sys.exit(f"FATAL config error in --{flag}={spec}: {e}")


def parse_flags(argv: list[str], *, config_flag: str = "config") -> list[str]:
  """absl flag parsing (as app.run's flags_parser) with one-line messages for bad configs and overrides."""
  _check_config_spec(argv[1:], config_flag)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # raised by the locked ConfigDict for an unknown override
    key = str(e).strip("\"'")
    culprits = [a for a in argv if a.startswith(f"--{config_flag}.") and re.search(rf"[.]{re.escape(key)}(=|[.]|$)", a)]
    where = f" (from {culprits[0]})" if culprits else ""
    sys.exit(f"FATAL config error: unknown config key {key!r}{where}; see the recipe's get_config() for the keys it "
             "defines.")
  except (flags.Error, ValueError) as e:
    message = str(e).strip().splitlines()
    sys.exit(f"FATAL flags error: {message[-1] if message else e}")


def start(workdir: str | os.PathLike) -> str:
  """The console and log-file setup of a run in `workdir`: INFO lines of speechfuse and of the launch scripts on the
  console, everything in <workdir>/log.txt; with --verbosity given, the libraries' lines on the console too."""
  verbose = flags.FLAGS["verbosity"].present
  if not verbose:
    logging.set_verbosity(logging.INFO)
  launch_dir = os.path.dirname(os.path.abspath(sys.argv[0]))
  return logs.setup(workdir, show_libraries=verbose, own=(launch_dir,))


def run_reporting(fn, *args, **kwargs):
  """fn(*args, **kwargs); a ValueError, OSError or RuntimeError (what bad input raises: every such message names its
  file, record or key) exits with its one line, its traceback written to the log file."""
  try:
    return fn(*args, **kwargs)
  except (ValueError, OSError, RuntimeError) as e:
    logs.traceback_to_file(e)
    where = logs.log_file()
    raise SystemExit(f"FATAL: {e}" + (f" (details: {where})" if where else "")) from None
