"""A quiet console: a run prints its own progress, stage and result lines; the libraries' INFO chatter (orbax's
option dumps and checkpoint-manager lines, grain, tfds) goes to the run's log file only.

    logs.setup(workdir, show_libraries=False)   # what the launchers do; --verbosity=0 (or 1, DEBUG) shows it all

Every record at INFO and above, from any library, is appended to <workdir>/log.txt. The console shows warnings
and errors from everyone and INFO lines from speechfuse and the launch scripts only, as "HH:MM:SS message" (warnings
and errors keep their level and source line); with the libraries' lines it keeps absl's full prefix.
"""

from __future__ import annotations

import logging as py_logging
import os

from absl import logging

LOG_FILE = "log.txt"
_OWN = (os.path.dirname(os.path.abspath(__file__)),)  # speechfuse's own source files
_FORMAT = "%(asctime)s %(levelname).1s %(filename)s:%(lineno)d] %(message)s"


class _ConsoleFormat(py_logging.Formatter):
  """"01:52:49 step 100/700 | ..." for INFO lines; "01:52:49 W file.py:12] ..." for warnings and errors."""

  def __init__(self):
    super().__init__(datefmt="%H:%M:%S")

  def format(self, record: py_logging.LogRecord) -> str:
    prefix = self.formatTime(record, self.datefmt)
    if record.levelno >= py_logging.WARNING:
      prefix += f" {record.levelname[0]} {record.filename}:{record.lineno}]"
    return f"{prefix} {record.getMessage()}" + (f"\n{self.formatException(record.exc_info)}" if record.exc_info else "")


class _OwnLines(py_logging.Filter):
  """Passes warnings and worse from anyone, INFO and DEBUG only from speechfuse and launch/ scripts."""

  def __init__(self, own: tuple[str, ...]):
    super().__init__()
    self._own = own

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or os.path.abspath(record.pathname).startswith(self._own)


def setup(workdir: str | os.PathLike, *, show_libraries: bool = False, own: tuple[str, ...] = ()) -> str:
  """Sends every INFO+ record to <workdir>/log.txt and, unless `show_libraries`, filters the console to this
  package's lines (and those of the files under `own`, e.g. the launch scripts' folder) plus warnings; returns
  the log file's path. Calling it again replaces the earlier setup."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.fspath(workdir), LOG_FILE)
  root = py_logging.getLogger()
  for handler in list(root.handlers):
    if getattr(handler, "_speechfuse", False):
      root.removeHandler(handler)
  file_handler = py_logging.FileHandler(path, encoding="utf-8")
  file_handler.setFormatter(py_logging.Formatter(_FORMAT))
  file_handler.setLevel(py_logging.INFO)
  file_handler._speechfuse = True  # pylint: disable=protected-access
  root.addHandler(file_handler)
  if root.level > py_logging.INFO or root.level == py_logging.NOTSET:
    root.setLevel(py_logging.INFO)
  console = logging.get_absl_handler()
  for existing in list(console.filters):
    if isinstance(existing, _OwnLines):
      console.removeFilter(existing)
  if show_libraries:
    console.setFormatter(logging.PythonFormatter())
  else:
    console.addFilter(_OwnLines(_OWN + tuple(os.path.abspath(p) for p in own)))
    console.setFormatter(_ConsoleFormat())
  return path


def log_file() -> str | None:
  """The path `setup` writes to (None before setup)."""
  for handler in py_logging.getLogger().handlers:
    if getattr(handler, "_speechfuse", False):
      return handler.baseFilename
  return None


def traceback_to_file(error: BaseException) -> None:
  """Writes `error`'s traceback to the log file only (the console gets the one-line message)."""
  for handler in py_logging.getLogger().handlers:
    if getattr(handler, "_speechfuse", False):
      record = py_logging.LogRecord("speechfuse", py_logging.ERROR, __file__, 0, "run failed: %s", (error,),
                                    (type(error), error, error.__traceback__))
      handler.handle(record)
