"""Finding the device profile a caller means: a name, a profile file, or a profile.

:mod:`npu_pipeline.profiles` is data (the profiles and their JSON form) and
imports no other part of the library; this module turns what a caller passes
as ``profile=`` (to :func:`~npu_pipeline.plan_batches`,
:func:`~npu_pipeline.open_pipeline`, ``npu-pipeline --profile``) into a
:class:`~npu_pipeline.profiles.DeviceProfile`:

- a shipped profile's name, ``"npu1"`` or ``"npu2"``;
- ``"cpu"``, calibrated on this host on first use
  (:func:`npu_pipeline.calibration.calibrated_cpu_profile`);
- ``"<one of those> slowed x<factor>"``;
- the path (``str`` or ``os.PathLike``) of a profile file, JSON as
  :meth:`DeviceProfile.to_json` writes it (for example a profile calibrated
  on the user's own NPU);
- a :class:`DeviceProfile`, returned as is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from npu_pipeline.calibration import calibrated_cpu_profile
from npu_pipeline.errors import PlanError, ProfileError, explain
from npu_pipeline.profiles import PROFILES, DeviceProfile

_SLOWED_NAME = re.compile(r"^(?P<base>\w+) slowed x(?P<factor>[0-9.eE+-]+)$")


def get_profile(profile: str | os.PathLike[str] | DeviceProfile) -> DeviceProfile:
    """The device profile ``profile`` names (see the module's list).

    A string that is no profile name is read as a file's path when it ends in
    ``.json``, contains a path separator or names an existing file.

    Raises:
        PlanError: no profile has that name, or ``profile`` is of another type.
        ProfileError: the profile file cannot be read or is not a valid profile.
    """
    if isinstance(profile, DeviceProfile):
        return profile
    if isinstance(profile, os.PathLike):
        return load_profile(profile)
    if not isinstance(profile, str):
        raise PlanError(
            explain(
                f"profile {profile!r} of type {type(profile).__name__}",
                "a profile name, the path of a profile JSON file, or a DeviceProfile",
                "Pass e.g. profile='npu1' or profile=Path('my-npu.json').",
            )
        )
    slowed = _SLOWED_NAME.match(profile)
    if slowed:
        try:
            factor = float(slowed["factor"])
        except ValueError:
            factor = float("nan")  # slowed() explains what a factor must be
        return get_profile(slowed["base"]).slowed(factor)
    if profile == "cpu":
        return calibrated_cpu_profile()
    if profile in PROFILES:
        return PROFILES[profile]
    if _is_path(profile):
        return load_profile(profile)
    raise PlanError(
        explain(
            f"no device profile {profile!r}",
            f"one of {', '.join(PROFILES)} (optionally '<name> slowed x<factor>'), "
            "or the path of a profile JSON file",
            "Check the spelling, or pass a DeviceProfile object.",
        )
    )


def load_profile(path: str | os.PathLike[str]) -> DeviceProfile:
    """The profile in the profile file at ``path`` (:meth:`DeviceProfile.to_json`'s format).

    Raises:
        ProfileError: the file cannot be read, or is not a valid profile (the
            message names the file and what is wrong in it).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ProfileError(
            explain(
                f"cannot read profile file {os.fspath(path)!r} ({type(error).__name__}: {error})",
                "a readable JSON file as DeviceProfile.to_json() writes it",
                "Check the path, or write the file with DeviceProfile.to_json().",
            )
        ) from None
    return DeviceProfile.from_json(text, origin=f"profile file {os.fspath(path)!r}")


def _is_path(text: str) -> bool:
    separators = {os.sep, os.altsep} - {None}
    return text.endswith(".json") or any(s in text for s in separators) or Path(text).is_file()
