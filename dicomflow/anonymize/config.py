"""Build a :class:`Deidentifier` from the settings a user gives (CLI, API or spec)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dicomflow.anonymize.burned_in import load_rules
from dicomflow.anonymize.engine import Deidentifier
from dicomflow.anonymize.keys import SecretKey, load_key
from dicomflow.anonymize.private import SafePrivateKey, default_safe_private, load_safe_private
from dicomflow.anonymize.profile import Option, Profile
from dicomflow.anonymize.values import default_vocabulary, load_vocabulary
from dicomflow.errors import ConfigError

PROFILES = ("basic",)


def deidentifier(
    *,
    key: SecretKey | None = None,
    key_file: str | None = None,
    key_env: str | None = None,
    profile: str = "basic",
    options: Iterable[str] = (),
    keep: Iterable[str] = (),
    overrides: Mapping[str, str] | None = None,
    pixel_rules: str | None = None,
    safe_private: str | None = None,
    vocabulary: str | None = None,
    pseudonymize_patient: bool = True,
    keep_mapping: bool = False,
) -> Deidentifier:
    """A configured :class:`Deidentifier`; every problem is a :class:`ConfigError`, raised
    before any work starts.

    ``key`` or ``key_file`` or ``key_env`` gives the pseudonymisation key.
    ``options`` are PS3.15 option names (``retain-longitudinal-modified`` …),
    ``keep`` and ``overrides`` the project's keep list (keywords or tags) and
    override list ``{keyword or tag: action}`` (an override wins over keep),
    ``pixel_rules`` a JSON file of regions to black out per device, and
    ``safe_private`` / ``vocabulary`` extend the shipped lists.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (available: {', '.join(PROFILES)})")
    secret = key if key is not None else load_key(key_file=key_file, key_env=key_env)
    project = {keyword: "K" for keyword in keep} | dict(overrides or {})
    resolved = Profile.build(options, project, pseudonymize_patient=pseudonymize_patient)
    safe: frozenset[SafePrivateKey] = frozenset()
    if Option.RETAIN_SAFE_PRIVATE in resolved.options:
        safe = default_safe_private() | (load_safe_private(safe_private) if safe_private else safe)
    words = default_vocabulary() | (load_vocabulary(vocabulary) if vocabulary else frozenset())
    return Deidentifier(
        resolved,
        secret,
        safe_private=safe,
        vocabulary=words,
        pixel_rules=load_rules(pixel_rules) if pixel_rules else (),
        keep_mapping=keep_mapping,
    )
