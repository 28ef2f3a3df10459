"""De-identification: the PS3.15 Annex E profile, keyed pseudonyms, the burned-in policy."""

from dicomflow.anonymize.engine import Deidentified, Deidentifier
from dicomflow.anonymize.keys import SecretKey, load_key
from dicomflow.anonymize.profile import Action, Option, Profile, load_table, resolve_action

__all__ = [
    "Action",
    "Deidentified",
    "Deidentifier",
    "Option",
    "Profile",
    "SecretKey",
    "load_key",
    "load_table",
    "resolve_action",
]
