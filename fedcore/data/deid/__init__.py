"""De-identification of DICOM files per the PS3.15 Annex E Basic Application Confidentiality Profile.

Every pixel and header used for training passes through :class:`Deidentifier` first. The profile is
*data*: :data:`BASIC_PROFILE` (:mod:`fedcore.data.deid.ps315_profile`) is Table E.1-1 of DICOM
PS3.15 Annex E (edition 2024b, Basic Profile column), one row per attribute with its action code:

* ``D`` replace with a non-zero-length dummy value of the attribute's VR (:func:`dummy_value`);
* ``Z`` replace with a zero-length value (a type 2 attribute stays present, empty);
* ``X`` remove;
* ``K`` keep (no row of the Basic Profile uses it; accepted for local additions);
* ``U`` replace the UID with another one, the same for the same input UID at one site
  (:meth:`Deidentifier.uid`);
* compound codes leave a choice to the implementation, which depends on whether the attribute is
  type 1, 2 or 3 in the object's IOD. fedcore resolves them to the *strictest* choice
  (:data:`COMPOUND_RESOLUTION`): ``X/Z``, ``X/D``, ``X/Z/D`` and ``X/Z/U*`` remove the attribute
  (the files feed training, not a PACS that validates IOD conformance, and a removed value cannot
  leak), ``Z/D`` empties it.

Beyond the table, and stricter than it:

* every private element is removed (the profile's "Private attributes: X");
* whole curve (50xx) and overlay (60xx) groups go, not only their data and comments, since an
  overlay plane can carry burned-in text;
* a ``D`` on a sequence leaves an empty sequence (no item can leak), a ``D`` on a UID remaps it;
* retired group lengths (gggg,0000), which would be wrong once elements are removed, are removed;
* the file meta's application entity titles and private information (:data:`FEDCORE_EXTRAS`) go,
  and the 128-byte preamble is zeroed: it may hold a TIFF header and thumbnail.

The output is marked: Patient Identity Removed ``YES``, De-identification Method naming the profile,
De-identification Method Code Sequence (113100, DCM) and Longitudinal Temporal Information Modified
``REMOVED``. A file whose Burned In Annotation is ``YES`` (identifying text in the pixels) or whose
Recognizable Visual Features is ``YES`` (a face can be rebuilt) is refused: the Basic Profile
requires cleaning the pixel data then, which this module does not do, and copying its header-only
version would look safe while it is not.

UIDs: new UID = ``2.25.`` + the first 128 bits of HMAC-SHA256(site secret, old UID) as a decimal
integer (at most 44 characters). The same input UID gives the same output at a site, so series and
studies still group and references between objects still resolve; without the secret a UID cannot be
traced back, and another site's secret gives another UID. Well-known UIDs (SOP Class, Transfer
Syntax, coding schemes) are not in the table and stay as they are. Pixel data, rescale, geometry,
modality and transfer syntax are not in the table either: they are kept byte for byte.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

# The package's parts: the profile table, what each action code does, reading and writing the
# files, the report. Every public name is importable from fedcore.data.deid itself.
from fedcore.data.deid.actions import (
    COMPOUND_RESOLUTION,
    dummy_value,
    profile_code,
    resolve_action,
    tag_string,
)
from fedcore.data.deid.files import (
    DeidentificationError,
    check_output_outside,
    read_dicom,
    same_file,
    write_dicom,
)
from fedcore.data.deid.ps315_profile import (
    BASIC_PROFILE,
    FEDCORE_EXTRAS,
    PROFILE_CODE,
    PROFILE_NAME,
)
from fedcore.data.deid.report import ACTIONS, Change, FileReport, report_dict, write_report

__all__ = [
    "ACTIONS",
    "BASIC_PROFILE",
    "COMPOUND_RESOLUTION",
    "FEDCORE_EXTRAS",
    "MIN_SECRET_BYTES",
    "PROFILE_CODE",
    "PROFILE_NAME",
    "SECRET_HOWTO",
    "UID_ROOT",
    "Change",
    "DeidentificationError",
    "Deidentifier",
    "FileReport",
    "check_output_outside",
    "default_jobs",
    "dummy_value",
    "load_site_secret",
    "profile_code",
    "report_dict",
    "resolve_action",
    "tag_string",
    "write_report",
]

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES: Final = 16
"""Shortest site secret accepted: 128 bits, as many as a remapped UID carries."""

UID_ROOT: Final = "2.25."
"""Root of every remapped UID: an integer derived from a UUID-sized number (PS3.5 B.2)."""

_UID_DOMAIN: Final = b"fedcore.deid.uid.v1\x00"

SECRET_HOWTO: Final = 'python -c "import secrets; print(secrets.token_hex(32))"'
"""A command that prints a good site secret."""


def load_site_secret(path: Path) -> bytes:
    """Read a site's de-identification secret from a file (surrounding whitespace stripped).

    Args:
        path: The secret file, e.g. made with
            ``python -c "import secrets; print(secrets.token_hex(32))" > site.secret``.

    Raises:
        DeidentificationError: If the file is missing, unreadable or holds fewer than
            :data:`MIN_SECRET_BYTES` bytes.
    """
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        raise DeidentificationError(
            f"site secret file {str(path)!r} does not exist: expected a file holding at least "
            f"{MIN_SECRET_BYTES} secret bytes. Fix: make one with "
            f"`{SECRET_HOWTO} > {path}` and keep it at the site"
        ) from None
    except OSError as exc:
        raise DeidentificationError(f"cannot read site secret file {str(path)!r}: {exc}") from None
    _check_secret(secret, f"site secret file {str(path)!r}")
    return secret


def _check_secret(secret: bytes, where: str) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise DeidentificationError(
            f"{where} holds {len(secret)} bytes: expected at least {MIN_SECRET_BYTES}, or "
            f"remapped UIDs could be guessed. Fix: make a new secret with `{SECRET_HOWTO}`"
        )


class Deidentifier:
    """Applies the Basic Profile to datasets, files and folders, with one site's UID secret.

    Args:
        site_secret: The site's secret key (at least :data:`MIN_SECRET_BYTES` bytes; a ``str`` is
            UTF-8 encoded). It alone decides the remapped UIDs: keep it at the site, never share
            it, and use the same one for every run whose outputs must group together.
        site_id: A label for logs; it does not change the UIDs.

    Raises:
        DeidentificationError: (a ``ValueError``) for an empty or too short secret.
    """

    def __init__(self, site_secret: bytes | str, *, site_id: str = "") -> None:
        key = site_secret.encode("utf-8") if isinstance(site_secret, str) else bytes(site_secret)
        _check_secret(key, "the site secret")
        self._key = key
        self.site_id = site_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(site_id={self.site_id!r})"  # never the secret

    def uid(self, old: str) -> str:
        """The UID that replaces ``old`` at this site: ``2.25.`` + 128 bits of HMAC-SHA256.

        Args:
            old: The original UID (trailing NUL or space padding is ignored).

        Raises:
            ValueError: For an empty UID.
        """
        key = str(old).strip("\x00 ")
        if not key:
            raise ValueError("cannot remap an empty UID: expected a UID such as '1.2.840.1'")
        mac = hmac.new(self._key, _UID_DOMAIN + key.encode("utf-8"), hashlib.sha256)
        return UID_ROOT + str(int.from_bytes(mac.digest()[:16], "big"))

    def dataset(self, ds: Dataset) -> tuple[Dataset, list[Change]]:
        """De-identify a dataset (and its file meta, if any); ``ds`` itself is left untouched.

        Args:
            ds: A dataset, e.g. from :func:`pydicom.dcmread`.

        Returns:
            A de-identified deep copy and the changes made, in dataset order (file meta first).

        Raises:
            DeidentificationError: If the pixels may show identity (Burned In Annotation or
                Recognizable Visual Features ``YES``), which the Basic Profile cannot fix.
        """
        return self._in_place(copy.deepcopy(ds))

    def _in_place(self, out: Dataset) -> tuple[Dataset, list[Change]]:
        """De-identify ``out`` itself (a dataset nobody else holds, e.g. one just read)."""
        _refuse_identifying_pixels(out)
        changes: list[Change] = []
        meta = getattr(out, "file_meta", None)
        if isinstance(meta, Dataset):
            self._clean(meta, changes)
        self._clean(out, changes)
        _mark_deidentified(out)
        return out, changes

    def file(self, src: Path, dst: Path) -> FileReport:
        """De-identify one DICOM file into ``dst`` (parent folders are made; ``src`` is only read).

        A file that is not DICOM, a DICOMDIR (a media index whose record offsets cannot survive
        de-identification: rebuild one from the output if needed) and a refused file are reported
        with the reason in :attr:`FileReport.error` and not written; so is a read or write error.

        Args:
            src: The input file.
            dst: The output file; it may exist (it is replaced) but must not be ``src``.
        """
        try:
            if same_file(src, dst):
                raise DeidentificationError(
                    f"output {str(dst)!r} is the input file itself: expected another path, "
                    "since the original must stay as it is"
                )
            out, changes = self._in_place(read_dicom(src))  # read fresh: no copy needed
            write_dicom(out, dst)
        except DeidentificationError as exc:
            logger.info("skipped %s: %s", src, exc)
            return FileReport(str(src), None, [], str(exc))
        except Exception as exc:  # one damaged file must not stop a folder of thousands
            logger.debug("failed on %s", src, exc_info=True)
            reason = f"cannot de-identify: {type(exc).__name__}: {exc}"
            logger.info("skipped %s: %s", src, reason)
            return FileReport(str(src), None, [], reason)
        logger.debug("de-identified %s -> %s (%d changes)", src, dst, len(changes))
        return FileReport(str(src), str(dst), changes, None)

    def tree(
        self,
        src_dir: Path,
        dst_dir: Path,
        *,
        progress: Callable[[int, int], None] | None = None,
        jobs: int = 1,
    ) -> list[FileReport]:
        """De-identify every file under ``src_dir`` into the same layout under ``dst_dir``.

        File and folder names are kept: they must not hold patient names. Non-DICOM files are
        reported and not copied. Nothing is ever written inside ``src_dir``.

        Args:
            src_dir: The input folder, searched recursively.
            dst_dir: The output folder (made if missing); neither inside ``src_dir``, nor equal
                to it, nor a folder above it.
            progress: Called as ``progress(done, total)`` before the first file and after each.
            jobs: Worker processes (each file is independent, so the output and the reports
                are the same for any number); 1 works in this process.

        Returns:
            One report per file, in sorted path order.

        Raises:
            DeidentificationError: If ``src_dir`` is not a folder or ``dst_dir`` overlaps it.
        """
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1; found {jobs}")
        src = src_dir.resolve()
        dst = dst_dir.resolve()
        if not src.is_dir():
            raise DeidentificationError(
                f"input {str(src_dir)!r} is not a folder: expected a folder of DICOM files"
            )
        check_output_outside(src, dst)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        total = len(files)
        if progress is not None:
            progress(0, total)
        pairs = [(path, dst / path.relative_to(src)) for path in files]
        reports: list[FileReport] = []
        if jobs == 1 or total < 2 * _CHUNK:
            results: Iterable[FileReport] = (self.file(a, b) for a, b in pairs)
            pool = None
        else:
            # spawned, not forked: the caller may run threads (a Flower node, torch)
            pool = ProcessPoolExecutor(
                max_workers=jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self._key, self.site_id),
            )
            results = pool.map(_worker_file, pairs, chunksize=_CHUNK)
        try:
            for done, report in enumerate(results, start=1):
                reports.append(report)
                if progress is not None:
                    progress(done, total)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        written = sum(1 for r in reports if r.ok)
        logger.info(
            "site %s: de-identified %d of %d files from %s into %s",
            self.site_id or "-",
            written,
            total,
            src,
            dst,
        )
        return reports

    def _clean(self, ds: Dataset, changes: list[Change]) -> None:
        """Apply the profile to ``ds`` in place, recursing into the items of kept sequences."""
        for tag in list(ds.keys()):
            number = int(tag)
            if tag.is_private:
                del ds[tag]
                changes.append(Change(tag_string(number), "", "private-removed"))
                continue
            if _in_curve_or_overlay_group(number) or (tag.element == 0 and tag.group != 0x0002):
                keyword = _keyword(ds, tag)
                del ds[tag]
                changes.append(Change(tag_string(number), keyword, "removed"))
                continue
            code = profile_code(number)
            elem = ds[tag]
            if code is None or resolve_action(code) == "K":
                if elem.VR == "SQ":
                    for item in elem.value:
                        self._clean(item, changes)
                continue
            action = self._apply(ds, elem, resolve_action(code))
            if action is not None:
                changes.append(Change(tag_string(number), elem.keyword, action))

    def _apply(self, ds: Dataset, elem: DataElement, action: str) -> str | None:
        """Carry out ``X``, ``Z``, ``D`` or ``U`` on one element; the change made, if any."""
        if action == "X":
            del ds[elem.tag]
            return "removed"
        if action == "Z":
            if elem.is_empty:
                return None
            if elem.VR == "SQ":
                elem.value = DicomSequence()
            else:
                elem.clear()
            return "emptied"
        if elem.VR == "UI" or action == "U":
            return "uid-remapped" if self._remap_uids(elem) else None
        if elem.VR == "SQ":  # D on a sequence: no item is left to leak
            if elem.is_empty:
                return None
            elem.value = DicomSequence()
            return "replaced"
        dummy = dummy_value(elem.VR)
        if elem.VM == 1 and elem.value == dummy:
            return None
        elem.value = dummy
        return "replaced"

    def _remap_uids(self, elem: DataElement) -> bool:
        """Replace every UID value of ``elem`` by :meth:`uid`; whether anything changed."""
        value = elem.value
        if isinstance(value, bytes):  # a UID element read with VR UN
            value = value.decode("ascii", errors="replace").strip("\x00 ")
        olds = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
        olds = [v for v in (o.strip("\x00 ") for o in olds) if v]
        if not olds:
            return False
        news = [self.uid(v) for v in olds]
        elem.VR = "UI"
        elem.value = news if len(news) > 1 else news[0]
        return True


def _keyword(ds: Dataset, tag: BaseTag) -> str:
    try:
        return str(ds[tag].keyword)
    except Exception:  # a damaged element that is removed anyway
        return ""


def _in_curve_or_overlay_group(tag: int) -> bool:
    group = tag >> 16
    return (0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF) and group % 2 == 0


def _is_yes(ds: Dataset, keyword: str) -> bool:
    return str(ds.get(keyword, "") or "").strip().upper() == "YES"


def _refuse_identifying_pixels(ds: Dataset) -> None:
    if _is_yes(ds, "BurnedInAnnotation"):
        raise DeidentificationError(
            "Burned In Annotation (0028,0301) is YES: the pixels show identifying text, which "
            "the Basic Profile removes only with the Clean Pixel Data option that fedcore does "
            "not implement. Fix: mask the text with a pixel-cleaning tool first, set Burned In "
            "Annotation to NO, then run deid again"
        )
    if _is_yes(ds, "RecognizableVisualFeatures"):
        raise DeidentificationError(
            "Recognizable Visual Features (0028,0302) is YES: a face or other feature can be "
            "rebuilt from the pixels, which the Basic Profile does not remove. Fix: deface "
            "the volume first, set Recognizable Visual Features to NO, then run deid again"
        )


def _mark_deidentified(ds: Dataset) -> None:
    """Add the profile's markers, keeping earlier de-identification methods."""
    ds.PatientIdentityRemoved = "YES"
    methods = [str(m) for m in _as_list(ds.get("DeidentificationMethod"))]
    if PROFILE_NAME not in methods:
        methods.append(PROFILE_NAME)
    ds.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
    codes = ds.get("DeidentificationMethodCodeSequence")
    items = list(codes) if codes is not None else []
    if not any(
        (item.get("CodeValue"), item.get("CodingSchemeDesignator")) == PROFILE_CODE[:2]
        for item in items
    ):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = PROFILE_CODE
        items.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(items)
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list):
        return list(value)
    return [value]


def default_jobs() -> int:
    """Worker processes for a folder: the CPU cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


_CHUNK: Final = 16
"""Files per task handed to a worker process by :meth:`Deidentifier.tree`."""

_WORKER: list[Deidentifier] = []


def _worker_init(key: bytes, site_id: str) -> None:
    _WORKER[:] = [Deidentifier(key, site_id=site_id)]


def _worker_file(pair: tuple[Path, Path]) -> FileReport:
    return _WORKER[0].file(*pair)
