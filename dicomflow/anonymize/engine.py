"""De-identify one instance: the burned-in policy, the profile walk, marking, new file meta.

:class:`Deidentifier` is a frozen, picklable configuration (the profile, the
key, the safe-private list, the vocabulary and the pixel rules). Each call
works on its own data set and keeps nothing between instances, so every
worker gives the same output for the same input and key.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomflow._version import __version__
from dicomflow.anonymize.burned_in import (
    PixelRule,
    blank_regions,
    find_rule,
    is_suspect,
    quarantine,
)
from dicomflow.anonymize.deidentify import Walk, deidentify_dataset, patient_key
from dicomflow.anonymize.fragments import even_fragments
from dicomflow.anonymize.keys import SecretKey
from dicomflow.anonymize.private import SafePrivateKey
from dicomflow.anonymize.profile import Option, Profile, load_table, required_types
from dicomflow.anonymize.proof import Fingerprint, ProofKey, fingerprints
from dicomflow.anonymize.pseudonyms import Pseudonymizer
from dicomflow.anonymize.values import default_vocabulary
from dicomflow.dicom.header import read_header
from dicomflow.errors import DeidentificationError, DicomflowError, is_instance_fault

# A UUID-derived UID (PS3.5 B.2) naming dicomflow as the writer of the file meta.
IMPLEMENTATION_CLASS_UID = UID("2.25.254828032729054574551006967159846512413")
IMPLEMENTATION_VERSION_NAME = f"DICOMFLOW_{__version__}"[:16]
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
LONGITUDINAL = {"full": "UNMODIFIED", "modified": "MODIFIED", "removed": "REMOVED"}


@dataclass(frozen=True)
class Deidentified:
    """One de-identified instance: the file bytes and the pseudonymous UIDs that name it."""

    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str
    mapping: tuple[tuple[str, str, str], ...] = ()
    fingerprints: tuple[Fingerprint, ...] = ()  # of the values removed (with a proof key)
    unchecked: int = 0  # removed values too short or too common to look for


@dataclass(frozen=True)
class Deidentifier:
    """Everything needed to de-identify instances the same way on any worker."""

    profile: Profile
    key: SecretKey = field(repr=False)
    safe_private: frozenset[SafePrivateKey] = frozenset()
    vocabulary: frozenset[str] = field(default_factory=default_vocabulary)
    pixel_rules: tuple[PixelRule, ...] = ()
    quarantine_burned_in: bool = True
    keep_mapping: bool = False
    proof_key: ProofKey | None = field(default=None, repr=False)  # the run's, when it proves

    @property
    def pseudonyms(self) -> Pseudonymizer:
        return Pseudonymizer(self.key)

    def dataset(self, ds: Dataset) -> tuple[Dataset, list[tuple[str, str, str]]]:
        """De-identify ``ds`` in place and return it with the honest-broker pairs."""
        ds, mapping, _ = self._deidentify(ds)
        return ds, mapping

    def _deidentify(
        self, ds: Dataset
    ) -> tuple[Dataset, list[tuple[str, str, str]], list[tuple[str, str]]]:
        """:meth:`dataset`, plus the (kind, value) pairs removed, for the proof."""
        sop_class = str(ds.get("SOPClassUID", "") or "")
        meta_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
        if MEDIA_STORAGE_DIRECTORY in (sop_class, meta_class):
            raise DeidentificationError(
                "a DICOMDIR is not de-identified: its records point at the original files; "
                "the de-identified files are written under their own paths"
            )
        clean_pixels = False
        if is_suspect(ds):
            rule = find_rule(ds, self.pixel_rules)
            if rule is not None:
                blank_regions(ds, rule)
                clean_pixels = True
            elif self.quarantine_burned_in:
                raise quarantine()
        pseudonyms = self.pseudonyms
        key = patient_key(ds)
        mapping: list[tuple[str, str, str]] = []
        original_meta_sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        walk = Walk(
            self.profile,
            pseudonyms,
            self.vocabulary,
            self.safe_private
            if Option.RETAIN_SAFE_PRIVATE in self.profile.options
            else frozenset(),
            key,
            pseudonyms.day_shift(key),
            pseudonyms.second_shift(key),
            mapping if self.keep_mapping else None,
            required=required_types(sop_class),
            removed=[] if self.proof_key is not None else None,
        )
        deidentify_dataset(ds, walk)
        if "PixelData" in ds and _encapsulated(ds.file_meta.get("TransferSyntaxUID")):
            ds.PixelData = even_fragments(ds.PixelData)
        self._mark(ds, clean_pixels)
        self._file_meta(ds, original_meta_sop)
        return ds, mapping, walk.removed or []

    def _mark(self, ds: Dataset, clean_pixels: bool) -> None:
        profile = self.profile
        ds.PatientIdentityRemoved = "YES"
        codes = profile.method_codes(clean_pixels=clean_pixels)
        edition = load_table().edition
        ds.DeidentificationMethod = [f"dicomflow {__version__} PS3.15 E {edition}"] + [
            meaning[:64] for _, meaning in codes
        ]
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = LONGITUDINAL[profile.dates]
        if clean_pixels:
            ds.BurnedInAnnotation = "NO"

    def _file_meta(self, ds: Dataset, original_meta_sop: str) -> None:
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        sop_uid = UID(str(ds.get("SOPInstanceUID", "") or ""))
        if not sop_uid:
            if not original_meta_sop:
                raise DeidentificationError("the instance has no SOP Instance UID")
            sop_uid = UID(self.pseudonyms.uid(original_meta_sop))
            ds.SOPInstanceUID = sop_uid
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = old.get("TransferSyntaxUID") or _syntax_read(ds)
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = meta

    def instance(self, data: bytes) -> Deidentified:
        """De-identify the Part 10 bytes of one instance; any failure raises
        :class:`DeidentificationError` with a message free of values."""
        # The strict header reader first: a truncated or malformed input gets the same
        # error code a scan would give it, instead of being half-read and rewritten.
        read_header(io.BytesIO(data), size=len(data))
        try:
            ds, mapping, removed = self._deidentify(dcmread(io.BytesIO(data), force=True))
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
        except DicomflowError:
            raise
        except RecursionError:
            raise DeidentificationError("data nested too deeply to de-identify") from None
        except BaseException as exc:  # any parse or write fault: never pass the instance through
            if not is_instance_fault(exc):  # Ctrl-C, exit: not the instance's fault
                raise
            raise DeidentificationError(
                f"de-identification failed ({type(exc).__name__})"
            ) from None
        study = str(ds.get("StudyInstanceUID", "") or "")
        prints: list[Fingerprint] = []
        unchecked = 0
        if self.proof_key is not None:
            prints, unchecked = fingerprints(self.proof_key, removed, study)
        return Deidentified(
            out.getvalue(),
            study,
            str(ds.get("SeriesInstanceUID", "") or ""),
            str(ds.SOPInstanceUID),
            tuple(mapping),
            tuple(prints),
            unchecked,
        )


def _syntax_read(ds: Dataset) -> UID:
    """The transfer syntax a file without one in its meta was read with."""
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _encapsulated(syntax: UID | None) -> bool:
    """Whether Pixel Data in ``syntax`` is encapsulated (unknown syntaxes: no)."""
    try:
        return syntax is not None and bool(UID(syntax).is_encapsulated)
    except ValueError:
        return False
