"""De-identification of DICOM files per the PS3.15 Annex E Basic Application Confidentiality Profile.

Every pixel and header used for training passes through :class:`Deidentifier` first. The profile is
*data*: :data:`BASIC_PROFILE` is Table E.1-1 of DICOM PS3.15 Annex E (edition 2024b, Basic Profile
column), one row per attribute with its action code:

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
import json
import logging
import multiprocessing
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import MediaStorageDirectoryStorage

from fedcore.storage import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

PROFILE_NAME: Final = "PS3.15 Basic Application Level Confidentiality Profile (fedcore)"
"""De-identification Method (0012,0063) written into every output (64 characters, the LO limit)."""

PROFILE_CODE: Final = ("113100", "DCM", "Basic Application Confidentiality Profile")
"""Code value, coding scheme designator and meaning of the profile, from PS3.16 CID 7050."""

MIN_SECRET_BYTES: Final = 16
"""Shortest site secret accepted: 128 bits, as many as a remapped UID carries."""

UID_ROOT: Final = "2.25."
"""Root of every remapped UID: an integer derived from a UUID-sized number (PS3.5 B.2)."""

ACTIONS: Final = ("removed", "replaced", "emptied", "uid-remapped", "private-removed")
"""What a :class:`Change` says was done to an element."""

_UID_DOMAIN: Final = b"fedcore.deid.uid.v1\x00"
_TEXT_DUMMY: Final = "ANONYMIZED"
_BINARY_DUMMY: Final = bytes(8)  # even, and a whole number of OD/OF/OL/OV values

# Transcribed from DICOM PS3.15 2024b, Annex E, Table E.1-1 (Basic Profile column), sorted by
# tag; each comment is the attribute's name. Edit only against the standard's text.
BASIC_PROFILE: Final[Mapping[int, str]] = MappingProxyType(
    {
        0x00001000: "X",  # Affected SOP Instance UID
        0x00001001: "U",  # Requested SOP Instance UID
        0x00020003: "U",  # Media Storage SOP Instance UID
        0x00041511: "U",  # Referenced SOP Instance UID in File
        0x00080012: "X/D",  # Instance Creation Date
        0x00080013: "X/Z/D",  # Instance Creation Time
        0x00080014: "U",  # Instance Creator UID
        0x00080015: "X",  # Instance Coercion DateTime
        0x00080017: "U",  # Acquisition UID
        0x00080018: "U",  # SOP Instance UID
        0x00080019: "U",  # Pyramid UID
        0x00080020: "Z",  # Study Date
        0x00080021: "X/D",  # Series Date
        0x00080022: "X/Z",  # Acquisition Date
        0x00080023: "Z/D",  # Content Date
        0x00080024: "X",  # Overlay Date
        0x00080025: "X",  # Curve Date
        0x0008002A: "X/Z/D",  # Acquisition DateTime
        0x00080030: "Z",  # Study Time
        0x00080031: "X/D",  # Series Time
        0x00080032: "X/Z",  # Acquisition Time
        0x00080033: "Z/D",  # Content Time
        0x00080034: "X",  # Overlay Time
        0x00080035: "X",  # Curve Time
        0x00080050: "Z",  # Accession Number
        0x00080054: "X",  # Retrieve AE Title
        0x00080055: "X",  # Station AE Title
        0x00080058: "U",  # Failed SOP Instance UID List
        0x00080080: "X/Z/D",  # Institution Name
        0x00080081: "X",  # Institution Address
        0x00080082: "X/Z/D",  # Institution Code Sequence
        0x00080090: "Z",  # Referring Physician's Name
        0x00080092: "X",  # Referring Physician's Address
        0x00080094: "X",  # Referring Physician's Telephone Numbers
        0x00080096: "X",  # Referring Physician Identification Sequence
        0x0008009C: "Z",  # Consulting Physician's Name
        0x0008009D: "X",  # Consulting Physician Identification Sequence
        0x00080106: "D",  # Context Group Version
        0x00080107: "D",  # Context Group Local Version
        0x00080201: "X",  # Timezone Offset From UTC
        0x00081000: "X",  # Network ID
        0x00081010: "X/Z/D",  # Station Name
        0x00081030: "X",  # Study Description
        0x0008103E: "X",  # Series Description
        0x00081040: "X",  # Institutional Department Name
        0x00081041: "X",  # Institutional Department Type Code Sequence
        0x00081048: "X",  # Physician(s) of Record
        0x00081049: "X",  # Physician(s) of Record Identification Sequence
        0x00081050: "X",  # Performing Physician's Name
        0x00081052: "X",  # Performing Physician Identification Sequence
        0x00081060: "X",  # Name of Physician(s) Reading Study
        0x00081062: "X",  # Physician(s) Reading Study Identification Sequence
        0x00081070: "X/Z/D",  # Operators' Name
        0x00081072: "X/D",  # Operator Identification Sequence
        0x00081080: "X",  # Admitting Diagnoses Description
        0x00081084: "X",  # Admitting Diagnoses Code Sequence
        0x00081088: "X",  # Pyramid Description
        0x00081110: "X/Z",  # Referenced Study Sequence
        0x00081111: "X/Z/D",  # Referenced Performed Procedure Step Sequence
        0x00081120: "X",  # Referenced Patient Sequence
        0x00081140: "X/Z/U*",  # Referenced Image Sequence
        0x00081155: "U",  # Referenced SOP Instance UID
        0x00081195: "U",  # Transaction UID
        0x00082111: "X",  # Derivation Description
        0x00082112: "X/Z/U*",  # Source Image Sequence
        0x00083010: "U",  # Irradiation Event UID
        0x00084000: "X",  # Identifying Comments
        0x00100010: "Z",  # Patient's Name
        0x00100020: "Z/D",  # Patient ID
        0x00100021: "X",  # Issuer of Patient ID
        0x00100030: "Z",  # Patient's Birth Date
        0x00100032: "X",  # Patient's Birth Time
        0x00100040: "Z",  # Patient's Sex
        0x00100050: "X",  # Patient's Insurance Plan Code Sequence
        0x00100101: "X",  # Patient's Primary Language Code Sequence
        0x00100102: "X",  # Patient's Primary Language Modifier Code Sequence
        0x00101000: "X",  # Other Patient IDs
        0x00101001: "X",  # Other Patient Names
        0x00101002: "X",  # Other Patient IDs Sequence
        0x00101005: "X",  # Patient's Birth Name
        0x00101010: "X",  # Patient's Age
        0x00101020: "X",  # Patient's Size
        0x00101030: "X",  # Patient's Weight
        0x00101040: "X",  # Patient's Address
        0x00101050: "X",  # Insurance Plan Identification
        0x00101060: "X",  # Patient's Mother's Birth Name
        0x00101080: "X",  # Military Rank
        0x00101081: "X",  # Branch of Service
        0x00101090: "X",  # Medical Record Locator
        0x00101100: "X",  # Referenced Patient Photo Sequence
        0x00102000: "X",  # Medical Alerts
        0x00102110: "X",  # Allergies
        0x00102150: "X",  # Country of Residence
        0x00102152: "X",  # Region of Residence
        0x00102154: "X",  # Patient's Telephone Numbers
        0x00102155: "X",  # Patient's Telecom Information
        0x00102160: "X",  # Ethnic Group
        0x00102180: "X",  # Occupation
        0x001021A0: "X",  # Smoking Status
        0x001021B0: "X",  # Additional Patient History
        0x001021C0: "X",  # Pregnancy Status
        0x001021D0: "X",  # Last Menstrual Date
        0x001021F0: "X",  # Patient's Religious Preference
        0x00102203: "X/Z",  # Patient's Sex Neutered
        0x00102297: "X",  # Responsible Person
        0x00102299: "X",  # Responsible Organization
        0x00104000: "X",  # Patient Comments
        0x00120010: "D",  # Clinical Trial Sponsor Name
        0x00120020: "D",  # Clinical Trial Protocol ID
        0x00120021: "Z",  # Clinical Trial Protocol Name
        0x00120022: "X",  # Issuer of Clinical Trial Protocol ID
        0x00120023: "X",  # Other Clinical Trial Protocol IDs Sequence
        0x00120030: "Z",  # Clinical Trial Site ID
        0x00120031: "Z",  # Clinical Trial Site Name
        0x00120032: "X",  # Issuer of Clinical Trial Site ID
        0x00120040: "D",  # Clinical Trial Subject ID
        0x00120041: "X",  # Issuer of Clinical Trial Subject ID
        0x00120042: "D",  # Clinical Trial Subject Reading ID
        0x00120043: "X",  # Issuer of Clinical Trial Subject Reading ID
        0x00120050: "Z",  # Clinical Trial Time Point ID
        0x00120051: "X",  # Clinical Trial Time Point Description
        0x00120055: "X",  # Issuer of Clinical Trial Time Point ID
        0x00120060: "Z",  # Clinical Trial Coordinating Center Name
        0x00120071: "X",  # Clinical Trial Series ID
        0x00120072: "X",  # Clinical Trial Series Description
        0x00120073: "X",  # Issuer of Clinical Trial Series ID
        0x00120081: "D",  # Clinical Trial Protocol Ethics Committee Name
        0x00120082: "X",  # Clinical Trial Protocol Ethics Committee Approval Number
        0x00120086: "X",  # Ethics Committee Approval Effectiveness Start Date
        0x00120087: "X",  # Ethics Committee Approval Effectiveness End Date
        0x0014407C: "X",  # Calibration Time
        0x0014407E: "X",  # Calibration Date
        0x0016002B: "X",  # Maker Note
        0x0016004B: "X",  # Device Setting Description
        0x0016004D: "X",  # Camera Owner Name
        0x0016004E: "X",  # Lens Specification
        0x0016004F: "X",  # Lens Make
        0x00160050: "X",  # Lens Model
        0x00160051: "X",  # Lens Serial Number
        0x00160070: "X",  # GPS Version ID
        0x00160071: "X",  # GPS Latitude Ref
        0x00160072: "X",  # GPS Latitude
        0x00160073: "X",  # GPS Longitude Ref
        0x00160074: "X",  # GPS Longitude
        0x00160075: "X",  # GPS Altitude Ref
        0x00160076: "X",  # GPS Altitude
        0x00160077: "X",  # GPS Time Stamp
        0x00160078: "X",  # GPS Satellites
        0x00160079: "X",  # GPS Status
        0x0016007A: "X",  # GPS Measure Mode
        0x0016007B: "X",  # GPS DOP
        0x0016007C: "X",  # GPS Speed Ref
        0x0016007D: "X",  # GPS Speed
        0x0016007E: "X",  # GPS Track Ref
        0x0016007F: "X",  # GPS Track
        0x00160080: "X",  # GPS Img Direction Ref
        0x00160081: "X",  # GPS Img Direction
        0x00160082: "X",  # GPS Map Datum
        0x00160083: "X",  # GPS Dest Latitude Ref
        0x00160084: "X",  # GPS Dest Latitude
        0x00160085: "X",  # GPS Dest Longitude Ref
        0x00160086: "X",  # GPS Dest Longitude
        0x00160087: "X",  # GPS Dest Bearing Ref
        0x00160088: "X",  # GPS Dest Bearing
        0x00160089: "X",  # GPS Dest Distance Ref
        0x0016008A: "X",  # GPS Dest Distance
        0x0016008B: "X",  # GPS Processing Method
        0x0016008C: "X",  # GPS Area Information
        0x0016008D: "X",  # GPS Date Stamp
        0x0016008E: "X",  # GPS Differential
        0x00180010: "Z/D",  # Contrast/Bolus Agent
        0x00180027: "X",  # Intervention Drug Stop Time
        0x00180035: "X",  # Intervention Drug Start Time
        0x00181000: "X/Z/D",  # Device Serial Number
        0x00181002: "U",  # Device UID
        0x00181004: "X",  # Plate ID
        0x00181005: "X",  # Generator ID
        0x00181007: "X",  # Cassette ID
        0x00181008: "X",  # Gantry ID
        0x00181009: "X",  # Unique Device Identifier
        0x0018100A: "X",  # UDI Sequence
        0x0018100B: "U",  # Manufacturer's Device Class UID
        0x00181012: "X",  # Date of Secondary Capture
        0x00181014: "X",  # Time of Secondary Capture
        0x00181030: "X/D",  # Protocol Name
        0x00181042: "X",  # Contrast/Bolus Start Time
        0x00181043: "X",  # Contrast/Bolus Stop Time
        0x00181072: "X",  # Radiopharmaceutical Start Time
        0x00181073: "X",  # Radiopharmaceutical Stop Time
        0x00181078: "X",  # Radiopharmaceutical Start DateTime
        0x00181079: "X",  # Radiopharmaceutical Stop DateTime
        0x001811BB: "D",  # Acquisition Field of View Label
        0x00181200: "X",  # Date of Last Calibration
        0x00181201: "X",  # Time of Last Calibration
        0x00181202: "X",  # DateTime of Last Calibration
        0x00181203: "Z",  # Calibration DateTime
        0x00181204: "X",  # Date of Manufacture
        0x00181205: "X",  # Date of Installation
        0x00181400: "X/D",  # Acquisition Device Processing Description
        0x00182042: "U",  # Target UID
        0x00184000: "X",  # Acquisition Comments
        0x00185011: "X",  # Transducer Identification Sequence
        0x0018700A: "X/D",  # Detector ID
        0x0018700C: "X/D",  # Date of Last Detector Calibration
        0x0018700E: "X/D",  # Time of Last Detector Calibration
        0x00189074: "D",  # Frame Acquisition DateTime
        0x00189151: "D",  # Frame Reference DateTime
        0x00189185: "X",  # Respiratory Motion Compensation Technique Description
        0x00189367: "D",  # X-Ray Source ID
        0x00189369: "D",  # Source Start DateTime
        0x0018936A: "D",  # Source End DateTime
        0x00189371: "D",  # X-Ray Detector ID
        0x00189373: "X",  # X-Ray Detector Label
        0x0018937B: "X",  # Multi-energy Acquisition Description
        0x0018937F: "X",  # Decomposition Description
        0x00189424: "X",  # Acquisition Protocol Description
        0x00189516: "X/D",  # Start Acquisition DateTime
        0x00189517: "X/D",  # End Acquisition DateTime
        0x00189623: "D",  # Functional Sync Pulse
        0x00189701: "D",  # Decay Correction DateTime
        0x00189804: "D",  # Exclusion Start DateTime
        0x00189919: "Z/D",  # Instruction Performed DateTime
        0x00189937: "X",  # Requested Series Description
        0x0018A002: "X",  # Contribution DateTime
        0x0018A003: "X",  # Contribution Description
        0x0020000D: "U",  # Study Instance UID
        0x0020000E: "U",  # Series Instance UID
        0x00200010: "Z",  # Study ID
        0x00200027: "X",  # Pyramid Label
        0x00200052: "U",  # Frame of Reference UID
        0x00200200: "U",  # Synchronization Frame of Reference UID
        0x00203401: "X",  # Modifying Device ID
        0x00203403: "X",  # Modified Image Date
        0x00203405: "X",  # Modified Image Time
        0x00203406: "X",  # Modified Image Description
        0x00204000: "X",  # Image Comments
        0x00209158: "X",  # Frame Comments
        0x00209161: "U",  # Concatenation UID
        0x00209164: "U",  # Dimension Organization UID
        0x00281199: "U",  # Palette Color Lookup Table UID
        0x00281214: "U",  # Large Palette Color Lookup Table UID
        0x00284000: "X",  # Image Presentation Comments
        0x00320012: "X",  # Study ID Issuer
        0x00320032: "X",  # Study Verified Date
        0x00320033: "X",  # Study Verified Time
        0x00320034: "X",  # Study Read Date
        0x00320035: "X",  # Study Read Time
        0x00321000: "X",  # Scheduled Study Start Date
        0x00321001: "X",  # Scheduled Study Start Time
        0x00321010: "X",  # Scheduled Study Stop Date
        0x00321011: "X",  # Scheduled Study Stop Time
        0x00321020: "X",  # Scheduled Study Location
        0x00321021: "X",  # Scheduled Study Location AE Title
        0x00321030: "X",  # Reason for Study
        0x00321032: "X",  # Requesting Physician
        0x00321033: "X",  # Requesting Service
        0x00321040: "X",  # Study Arrival Date
        0x00321041: "X",  # Study Arrival Time
        0x00321050: "X",  # Study Completion Date
        0x00321051: "X",  # Study Completion Time
        0x00321060: "X/Z",  # Requested Procedure Description
        0x00321066: "X",  # Reason for Visit
        0x00321067: "X",  # Reason for Visit Code Sequence
        0x00321070: "X",  # Requested Contrast Agent
        0x00324000: "X",  # Study Comments
        0x00340001: "D",  # Flow Identifier Sequence
        0x00340002: "D",  # Flow Identifier
        0x00340005: "D",  # Source Identifier
        0x00340007: "D",  # Frame Origin Timestamp
        0x00380004: "X",  # Referenced Patient Alias Sequence
        0x00380010: "X",  # Admission ID
        0x00380011: "X",  # Issuer of Admission ID
        0x00380014: "X",  # Issuer of Admission ID Sequence
        0x0038001A: "X",  # Scheduled Admission Date
        0x0038001B: "X",  # Scheduled Admission Time
        0x0038001C: "X",  # Scheduled Discharge Date
        0x0038001D: "X",  # Scheduled Discharge Time
        0x0038001E: "X",  # Scheduled Patient Institution Residence
        0x00380020: "X",  # Admitting Date
        0x00380021: "X",  # Admitting Time
        0x00380030: "X",  # Discharge Date
        0x00380032: "X",  # Discharge Time
        0x00380040: "X",  # Discharge Diagnosis Description
        0x00380050: "X",  # Special Needs
        0x00380060: "X",  # Service Episode ID
        0x00380061: "X",  # Issuer of Service Episode ID
        0x00380062: "X",  # Service Episode Description
        0x00380064: "X",  # Issuer of Service Episode ID Sequence
        0x00380300: "X",  # Current Patient Location
        0x00380400: "X",  # Patient's Institution Residence
        0x00380500: "X",  # Patient State
        0x00384000: "X",  # Visit Comments
        0x003A0310: "U",  # Multiplex Group UID
        0x003A0314: "D",  # Impedance Measurement DateTime
        0x003A0329: "X",  # Waveform Filter Description
        0x003A032B: "X",  # Filter Lookup Table Description
        0x00400001: "X",  # Scheduled Station AE Title
        0x00400002: "X",  # Scheduled Procedure Step Start Date
        0x00400003: "X",  # Scheduled Procedure Step Start Time
        0x00400004: "X",  # Scheduled Procedure Step End Date
        0x00400005: "X",  # Scheduled Procedure Step End Time
        0x00400006: "X",  # Scheduled Performing Physician's Name
        0x00400007: "X",  # Scheduled Procedure Step Description
        0x00400009: "X",  # Scheduled Procedure Step ID
        0x0040000B: "X",  # Scheduled Performing Physician Identification Sequence
        0x00400010: "X",  # Scheduled Station Name
        0x00400011: "X",  # Scheduled Procedure Step Location
        0x00400012: "X",  # Pre-Medication
        0x00400241: "X",  # Performed Station AE Title
        0x00400242: "X",  # Performed Station Name
        0x00400243: "X",  # Performed Location
        0x00400244: "X",  # Performed Procedure Step Start Date
        0x00400245: "X",  # Performed Procedure Step Start Time
        0x00400250: "X",  # Performed Procedure Step End Date
        0x00400251: "X",  # Performed Procedure Step End Time
        0x00400253: "X",  # Performed Procedure Step ID
        0x00400254: "X",  # Performed Procedure Step Description
        0x00400275: "X",  # Request Attributes Sequence
        0x00400280: "X",  # Comments on the Performed Procedure Step
        0x00400310: "X",  # Comments on Radiation Dose
        0x0040050A: "X",  # Specimen Accession Number
        0x00400512: "D",  # Container Identifier
        0x00400513: "Z",  # Issuer of the Container Identifier Sequence
        0x0040051A: "X",  # Container Description
        0x00400551: "D",  # Specimen Identifier
        0x00400554: "U",  # Specimen UID
        0x00400555: "X/Z",  # Acquisition Context Sequence
        0x00400562: "Z",  # Issuer of the Specimen Identifier Sequence
        0x00400600: "X",  # Specimen Short Description
        0x00400602: "X",  # Specimen Detailed Description
        0x00400610: "Z",  # Specimen Preparation Sequence
        0x004006FA: "X",  # Slide Identifier
        0x00401001: "X",  # Requested Procedure ID
        0x00401002: "X",  # Reason for the Requested Procedure
        0x00401004: "X",  # Patient Transport Arrangements
        0x00401005: "X",  # Requested Procedure Location
        0x0040100A: "X",  # Reason for Requested Procedure Code Sequence
        0x00401010: "X",  # Names of Intended Recipients of Results
        0x00401011: "X",  # Intended Recipients of Results Identification Sequence
        0x00401101: "D",  # Person Identification Code Sequence
        0x00401102: "X",  # Person's Address
        0x00401103: "X",  # Person's Telephone Numbers
        0x00401104: "X",  # Person's Telecom Information
        0x00401400: "X",  # Requested Procedure Comments
        0x00402001: "X",  # Reason for the Imaging Service Request
        0x00402004: "X",  # Issue Date of Imaging Service Request
        0x00402005: "X",  # Issue Time of Imaging Service Request
        0x00402008: "X",  # Order Entered By
        0x00402009: "X",  # Order Enterer's Location
        0x00402010: "X",  # Order Callback Phone Number
        0x00402011: "X",  # Order Callback Telecom Information
        0x00402016: "Z",  # Placer Order Number / Imaging Service Request
        0x00402017: "Z",  # Filler Order Number / Imaging Service Request
        0x00402400: "X",  # Imaging Service Request Comments
        0x00403001: "X",  # Confidentiality Constraint on Patient Data Description
        0x00404005: "X",  # Scheduled Procedure Step Start DateTime
        0x00404008: "X",  # Scheduled Procedure Step Expiration DateTime
        0x00404010: "X",  # Scheduled Procedure Step Modification DateTime
        0x00404011: "X",  # Expected Completion DateTime
        0x00404023: "U",  # Referenced General Purpose Scheduled Procedure Step Transaction UID
        0x00404025: "X",  # Scheduled Station Name Code Sequence
        0x00404027: "X",  # Scheduled Station Geographic Location Code Sequence
        0x00404028: "X",  # Performed Station Name Code Sequence
        0x00404030: "X",  # Performed Station Geographic Location Code Sequence
        0x00404034: "X",  # Scheduled Human Performers Sequence
        0x00404035: "X",  # Actual Human Performers Sequence
        0x00404036: "X",  # Human Performer's Organization
        0x00404037: "X",  # Human Performer's Name
        0x00404050: "X",  # Performed Procedure Step Start DateTime
        0x00404051: "X",  # Performed Procedure Step End DateTime
        0x00404052: "X",  # Procedure Step Cancellation DateTime
        0x0040A023: "X",  # Findings Group Recording Date (Trial)
        0x0040A024: "X",  # Findings Group Recording Time (Trial)
        0x0040A027: "D",  # Verifying Organization
        0x0040A030: "D",  # Verification DateTime
        0x0040A032: "X/D",  # Observation DateTime
        0x0040A033: "X",  # Observation Start DateTime
        0x0040A073: "D",  # Verifying Observer Sequence
        0x0040A075: "D",  # Verifying Observer Name
        0x0040A078: "X",  # Author Observer Sequence
        0x0040A07A: "X",  # Participant Sequence
        0x0040A07C: "X",  # Custodial Organization Sequence
        0x0040A082: "Z",  # Participation DateTime
        0x0040A088: "Z",  # Verifying Observer Identification Code Sequence
        0x0040A110: "X",  # Date of Document or Verbal Transaction (Trial)
        0x0040A112: "X",  # Time of Document Creation or Verbal Transaction (Trial)
        0x0040A120: "D",  # DateTime
        0x0040A121: "D",  # Date
        0x0040A122: "D",  # Time
        0x0040A123: "D",  # Person Name
        0x0040A124: "U",  # UID
        0x0040A13A: "D",  # Referenced DateTime
        0x0040A171: "U",  # Observation UID
        0x0040A172: "U",  # Referenced Observation UID (Trial)
        0x0040A192: "X",  # Observation Date (Trial)
        0x0040A193: "X",  # Observation Time (Trial)
        0x0040A307: "X",  # Current Observer (Trial)
        0x0040A352: "X",  # Verbal Source (Trial)
        0x0040A353: "X",  # Address (Trial)
        0x0040A354: "X",  # Telephone Number (Trial)
        0x0040A358: "X",  # Verbal Source Identifier Code Sequence (Trial)
        0x0040A402: "U",  # Observation Subject UID (Trial)
        0x0040A730: "D",  # Content Sequence
        0x0040DB06: "X",  # Template Version
        0x0040DB07: "X",  # Template Local Version
        0x0040DB0C: "U",  # Template Extension Organization UID
        0x0040DB0D: "U",  # Template Extension Creator UID
        0x0040E004: "X",  # HL7 Document Effective Time
        0x00420011: "D",  # Encapsulated Document
        0x00440004: "X",  # Approval Status DateTime
        0x0044000B: "X",  # Product Expiration DateTime
        0x00440010: "X",  # Substance Administration DateTime
        0x00440104: "D",  # Assertion DateTime
        0x00440105: "X",  # Assertion Expiration DateTime
        0x0050001B: "X",  # Container Component ID
        0x00500020: "X",  # Device Description
        0x00500021: "X",  # Long Device Description
        0x00620021: "U",  # Tracking UID
        0x00640003: "U",  # Source Frame of Reference UID
        0x00686226: "D",  # Effective DateTime
        0x00686270: "D",  # Information Issue DateTime
        0x006A0003: "D",  # Annotation Group UID
        0x006A0005: "D",  # Annotation Group Label
        0x006A0006: "X",  # Annotation Group Description
        0x00700001: "D",  # Graphic Annotation Sequence
        0x00700082: "X",  # Presentation Creation Date
        0x00700083: "X",  # Presentation Creation Time
        0x00700084: "Z/D",  # Content Creator's Name
        0x00700086: "X",  # Content Creator's Identification Code Sequence
        0x0070031A: "U",  # Fiducial UID
        0x00701101: "U",  # Presentation Display Collection UID
        0x00701102: "U",  # Presentation Sequence Collection UID
        0x0072000A: "D",  # Hanging Protocol Creation DateTime
        0x0072005E: "D",  # Selector AE Value
        0x0072005F: "D",  # Selector AS Value
        0x00720061: "D",  # Selector DA Value
        0x00720063: "D",  # Selector DT Value
        0x00720065: "D",  # Selector OB Value
        0x00720066: "D",  # Selector LO Value
        0x00720068: "D",  # Selector LT Value
        0x0072006A: "D",  # Selector PN Value
        0x0072006B: "D",  # Selector TM Value
        0x0072006C: "D",  # Selector SH Value
        0x0072006D: "D",  # Selector UN Value
        0x0072006E: "D",  # Selector ST Value
        0x00720070: "D",  # Selector UT Value
        0x00720071: "D",  # Selector UR Value
        0x00741234: "X",  # Receiving AE
        0x00741236: "X",  # Requesting AE
        0x00880140: "U",  # Storage Media File-set UID
        0x00880200: "X",  # Icon Image Sequence
        0x00880904: "X",  # Topic Title
        0x00880906: "X",  # Topic Subject
        0x00880910: "X",  # Topic Author
        0x00880912: "X",  # Topic Keywords
        0x01000420: "X",  # SOP Authorization DateTime
        0x04000100: "U",  # Digital Signature UID
        0x04000105: "D",  # Digital Signature DateTime
        0x04000115: "D",  # Certificate of Signer
        0x04000310: "X",  # Certified Timestamp
        0x04000402: "X",  # Referenced Digital Signature Sequence
        0x04000403: "X",  # Referenced SOP Instance MAC Sequence
        0x04000404: "X",  # MAC
        0x04000550: "X",  # Modified Attributes Sequence
        0x04000551: "X",  # Nonconforming Modified Attributes Sequence
        0x04000552: "X",  # Nonconforming Data Element Value
        0x04000561: "X",  # Original Attributes Sequence
        0x04000562: "D",  # Attribute Modification DateTime
        0x04000563: "D",  # Modifying System
        0x04000564: "Z",  # Source of Previous Values
        0x04000565: "D",  # Reason for the Attribute Modification
        0x04000600: "X",  # Instance Origin Status
        0x20300020: "X",  # Text String
        0x21000040: "X",  # Creation Date
        0x21000050: "X",  # Creation Time
        0x21000070: "X",  # Originator
        0x21000140: "D",  # Destination AE
        0x22000002: "X/Z",  # Label Text
        0x22000005: "X/Z",  # Barcode Value
        0x30020121: "X",  # Position Acquisition Template Name
        0x30020123: "X",  # Position Acquisition Template Description
        0x30060002: "D",  # Structure Set Label
        0x30060004: "X",  # Structure Set Name
        0x30060006: "X",  # Structure Set Description
        0x30060008: "Z",  # Structure Set Date
        0x30060009: "Z",  # Structure Set Time
        0x30060024: "U",  # Referenced Frame of Reference UID
        0x30060026: "Z",  # ROI Name
        0x30060028: "X",  # ROI Description
        0x3006002D: "X",  # ROI DateTime
        0x3006002E: "X",  # ROI Observation DateTime
        0x30060038: "X",  # ROI Generation Description
        0x3006004D: "X",  # ROI Creator Sequence
        0x3006004E: "X",  # ROI Interpreter Sequence
        0x30060085: "X",  # ROI Observation Label
        0x30060088: "X",  # ROI Observation Description
        0x300600A6: "Z",  # ROI Interpreter
        0x300600C2: "U",  # Related Frame of Reference UID
        0x30080024: "D",  # Treatment Control Point Date
        0x30080025: "D",  # Treatment Control Point Time
        0x30080054: "X/D",  # First Treatment Date
        0x30080056: "X/D",  # Most Recent Treatment Date
        0x30080105: "X/Z",  # Source Serial Number
        0x30080162: "D",  # Safe Position Exit Date
        0x30080164: "D",  # Safe Position Exit Time
        0x30080166: "D",  # Safe Position Return Date
        0x30080168: "D",  # Safe Position Return Time
        0x30080250: "X/D",  # Treatment Date
        0x30080251: "X/D",  # Treatment Time
        0x300A0002: "D",  # RT Plan Label
        0x300A0003: "X",  # RT Plan Name
        0x300A0004: "X",  # RT Plan Description
        0x300A0006: "X/D",  # RT Plan Date
        0x300A0007: "X/D",  # RT Plan Time
        0x300A000B: "X",  # Treatment Sites
        0x300A000E: "X",  # Prescription Description
        0x300A0013: "U",  # Dose Reference UID
        0x300A0016: "X",  # Dose Reference Description
        0x300A0072: "X",  # Fraction Group Description
        0x300A0083: "U",  # Referenced Dose Reference UID
        0x300A00B2: "X/Z",  # Treatment Machine Name
        0x300A00C3: "X",  # Beam Description
        0x300A00DD: "X",  # Bolus Description
        0x300A0196: "X",  # Fixation Device Description
        0x300A01A6: "X",  # Shielding Device Description
        0x300A01B2: "X",  # Setup Technique Description
        0x300A0216: "X",  # Source Manufacturer
        0x300A022C: "D",  # Source Strength Reference Date
        0x300A022E: "D",  # Source Strength Reference Time
        0x300A02EB: "X",  # Compensator Description
        0x300A0608: "D",  # Treatment Position Group Label
        0x300A0609: "U",  # Treatment Position Group UID
        0x300A0611: "Z",  # RT Accessory Holder Slot ID
        0x300A0615: "Z",  # RT Accessory Device Slot ID
        0x300A0619: "D",  # Radiation Dose Identification Label
        0x300A0623: "D",  # Radiation Dose In-Vivo Measurement Label
        0x300A062A: "D",  # RT Tolerance Set Label
        0x300A0650: "U",  # Patient Setup UID
        0x300A0676: "X",  # Equipment Frame of Reference Description
        0x300A067C: "D",  # Radiation GenerationMode Label
        0x300A067D: "Z",  # Radiation GenerationMode Description
        0x300A0700: "U",  # Treatment Session UID
        0x300A0734: "D",  # Treatment Tolerance Violation Description
        0x300A0736: "D",  # Treatment Tolerance Violation DateTime
        0x300A073A: "D",  # Recorded RT Control Point DateTime
        0x300A0741: "D",  # Interlock DateTime
        0x300A0742: "D",  # Interlock Description
        0x300A0760: "D",  # Override DateTime
        0x300A0783: "D",  # Interlock Origin Description
        0x300A0785: "U",  # Referenced Treatment Position Group UID
        0x300A078E: "X",  # Patient Treatment Preparation Procedure Parameter Description
        0x300A0792: "X",  # Patient Treatment Preparation Method Description
        0x300A0794: "X",  # Patient Setup Photo Description
        0x300A079A: "X",  # Displacement Reference Label
        0x300C0113: "X",  # Reason for Omission Description
        0x300C0127: "D",  # Beam Hold Transition DateTime
        0x300E0004: "Z",  # Review Date
        0x300E0005: "Z",  # Review Time
        0x300E0008: "X/Z",  # Reviewer Name
        0x30100006: "U",  # Conceptual Volume UID
        0x3010000B: "U",  # Referenced Conceptual Volume UID
        0x3010000F: "Z",  # Conceptual Volume Combination Description
        0x30100013: "U",  # Constituent Conceptual Volume UID
        0x30100015: "U",  # Source Conceptual Volume UID
        0x30100017: "Z",  # Conceptual Volume Description
        0x3010001B: "Z",  # Device Alternate Identifier
        0x3010002D: "D",  # Device Label
        0x30100031: "U",  # Referenced Fiducials UID
        0x30100033: "D",  # User Content Label
        0x30100034: "D",  # User Content Long Label
        0x30100035: "D",  # Entity Label
        0x30100036: "X",  # Entity Name
        0x30100037: "X",  # Entity Description
        0x30100038: "D",  # Entity Long Label
        0x3010003B: "U",  # RT Treatment Phase UID
        0x30100043: "Z",  # Manufacturer's Device Identifier
        0x3010004C: "X/D",  # Intended Phase Start Date
        0x3010004D: "X/D",  # Intended Phase End Date
        0x30100054: "D",  # RT Prescription Label
        0x30100056: "X/D",  # RT Treatment Approach Label
        0x3010005A: "Z",  # RT Physician Intent Narrative
        0x3010005C: "Z",  # Reason for Superseding
        0x30100061: "X",  # Prior Treatment Dose Description
        0x3010006E: "U",  # Dosimetric Objective UID
        0x3010006F: "U",  # Referenced Dosimetric Objective UID
        0x30100077: "X/D",  # Treatment Site
        0x3010007A: "Z",  # Treatment Technique Notes
        0x3010007B: "Z",  # Prescription Notes
        0x3010007F: "Z",  # Fractionation Notes
        0x30100081: "Z",  # Prescription Notes Sequence
        0x30100085: "X",  # Intended Fraction Start Time
        0x40000010: "X",  # Arbitrary
        0x40004000: "X",  # Text Comments
        0x40080040: "X",  # Results ID
        0x40080042: "X",  # Results ID Issuer
        0x40080100: "X",  # Interpretation Recorded Date
        0x40080101: "X",  # Interpretation Recorded Time
        0x40080102: "X",  # Interpretation Recorder
        0x40080108: "X",  # Interpretation Transcription Date
        0x40080109: "X",  # Interpretation Transcription Time
        0x4008010A: "X",  # Interpretation Transcriber
        0x4008010B: "X",  # Interpretation Text
        0x4008010C: "X",  # Interpretation Author
        0x40080111: "X",  # Interpretation Approver Sequence
        0x40080112: "X",  # Interpretation Approval Date
        0x40080113: "X",  # Interpretation Approval Time
        0x40080114: "X",  # Physician Approving Interpretation
        0x40080115: "X",  # Interpretation Diagnosis Description
        0x40080118: "X",  # Results Distribution List Sequence
        0x40080119: "X",  # Distribution Name
        0x4008011A: "X",  # Distribution Address
        0x40080200: "X",  # Interpretation ID
        0x40080202: "X",  # Interpretation ID Issuer
        0x40080300: "X",  # Impressions
        0x40084000: "X",  # Results Comments
        0xFFFAFFFA: "X",  # Digital Signatures Sequence
        0xFFFCFFFC: "X",  # Data Set Trailing Padding
    }
)
"""PS3.15 (2024b) Table E.1-1, Basic Profile column: tag -> action code (617 rows).

Curve (50xx,xxxx) and overlay (60xx,3000 / 60xx,4000) rows and "private attributes" are
groups, not single tags: :class:`Deidentifier` handles them in code."""

FEDCORE_EXTRAS: Final[Mapping[int, str]] = MappingProxyType(
    {
        # File meta elements the table does not list, removed by fedcore: they name the sending
        # and receiving systems of the site, or carry opaque private information.
        0x00020016: "X",  # Source Application Entity Title
        0x00020017: "X",  # Sending Application Entity Title
        0x00020018: "X",  # Receiving Application Entity Title
        0x00020100: "X",  # Private Information Creator UID
        0x00020102: "X",  # Private Information
    }
)
"""Rows fedcore adds to the profile; all of them remove the element."""

COMPOUND_RESOLUTION: Final[Mapping[str, str]] = MappingProxyType(
    {"X/Z": "X", "X/D": "X", "X/Z/D": "X", "X/Z/U*": "X", "Z/D": "Z"}
)
"""The strictest choice for each compound code of the table (see the module docstring)."""

_SIMPLE_CODES: Final = frozenset({"X", "Z", "D", "K", "U"})

_DUMMY_BY_VR: Final[Mapping[str, str | int | float | bytes]] = MappingProxyType(
    {
        "AE": _TEXT_DUMMY,
        "AS": "000D",
        "CS": _TEXT_DUMMY,
        "DA": "19000101",
        "DS": "0",
        "DT": "19000101000000",
        "IS": "0",
        "LO": _TEXT_DUMMY,
        "LT": _TEXT_DUMMY,
        "PN": "ANONYMOUS",
        "SH": _TEXT_DUMMY,
        "ST": _TEXT_DUMMY,
        "TM": "000000",
        "UC": _TEXT_DUMMY,
        "UR": _TEXT_DUMMY,
        "UT": _TEXT_DUMMY,
        "FL": 0.0,
        "FD": 0.0,
        "SL": 0,
        "SS": 0,
        "SV": 0,
        "UL": 0,
        "US": 0,
        "UV": 0,
        "OB": _BINARY_DUMMY,
        "OD": _BINARY_DUMMY,
        "OF": _BINARY_DUMMY,
        "OL": _BINARY_DUMMY,
        "OV": _BINARY_DUMMY,
        "OW": _BINARY_DUMMY,
        "UN": _BINARY_DUMMY,
    }
)


class DeidentificationError(ValueError):
    """A file that cannot be de-identified safely, or a bad secret, file or folder."""


@dataclass(frozen=True)
class Change:
    """One element changed in one file: its tag ``"(gggg,eeee)"``, keyword and what was done.

    ``action`` is one of :data:`ACTIONS`. Values are never recorded: a report holds no PHI.
    """

    tag: str
    keyword: str
    action: str


@dataclass
class FileReport:
    """What happened to one input file: where it went and what changed, or why it was skipped."""

    source: str
    target: str | None
    changes: list[Change] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was de-identified and written."""
        return self.error is None


def resolve_action(code: str) -> str:
    """The action fedcore carries out for a table code: one of ``X``, ``Z``, ``D``, ``K``, ``U``.

    Args:
        code: An action code of PS3.15 Table E.1-1, simple (``"D"``) or compound (``"X/Z/D"``).

    Raises:
        ValueError: For a code the table does not use.
    """
    if code in _SIMPLE_CODES:
        return code
    try:
        return COMPOUND_RESOLUTION[code]
    except KeyError:
        known = ", ".join(sorted(_SIMPLE_CODES | set(COMPOUND_RESOLUTION)))
        raise ValueError(
            f"unknown de-identification action code {code!r}: expected one of {known}"
        ) from None


def profile_code(tag: int) -> str | None:
    """The table's action code for a public tag (``None``: not in the profile, kept as it is).

    Args:
        tag: The element's tag as an integer, e.g. ``0x00100010`` for Patient's Name.
    """
    return BASIC_PROFILE.get(tag) or FEDCORE_EXTRAS.get(tag)


def dummy_value(vr: str) -> str | int | float | bytes:
    """The dummy value that action ``D`` writes for a value representation.

    Args:
        vr: A DICOM value representation such as ``"PN"`` or ``"DA"``; for an ambiguous one
            (``"US or SS"``) the first is used.

    Raises:
        ValueError: For ``SQ``, ``UI`` and ``AT``, which have no dummy value (a sequence is
            emptied, a UID remapped, see the module docstring), or an unknown VR.
    """
    key = vr.split(" or ")[0].strip()
    try:
        return _DUMMY_BY_VR[key]
    except KeyError:
        raise ValueError(
            f"no dummy value for VR {vr!r}: expected one of {', '.join(sorted(_DUMMY_BY_VR))}"
        ) from None


def tag_string(tag: int) -> str:
    """``"(gggg,eeee)"`` for a tag, as DICOM writes it."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


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
            if _same_file(src, dst):
                raise DeidentificationError(
                    f"output {str(dst)!r} is the input file itself: expected another path, "
                    "since the original must stay as it is"
                )
            out, changes = self._in_place(_read_dicom(src))  # read fresh: no copy needed
            _write(out, dst)
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


def check_output_outside(src: Path, dst: Path) -> None:
    """Refuse an output folder equal to, inside, or above the input folder.

    Args:
        src: The input folder.
        dst: The output folder.

    Raises:
        DeidentificationError: Naming both folders and how to fix it.
    """
    src, dst = src.resolve(), dst.resolve()
    if dst == src or dst.is_relative_to(src):
        where = "is the input folder" if dst == src else "is inside the input folder"
        raise DeidentificationError(
            f"output folder {str(dst)!r} {where} {str(src)!r}: expected a folder outside it, so "
            "that originals and de-identified copies are never mixed. Fix: pick an output "
            "folder elsewhere"
        )
    if src.is_relative_to(dst):
        raise DeidentificationError(
            f"output folder {str(dst)!r} contains the input folder {str(src)!r}: mirrored "
            "output paths could land on input files. Fix: pick an output folder beside it"
        )


def report_dict(reports: Sequence[FileReport]) -> dict[str, Any]:
    """The de-identification report as JSON-ready data: counts, then one entry per file.

    Keys: ``profile``; ``files_total``, ``files_written``, ``files_skipped``; ``actions`` (count
    per action); ``attributes`` (per ``"(gggg,eeee) Keyword"``, count per action); ``files``
    (per file: ``source``, ``target``, ``error``, ``changes`` as tag, keyword, action).
    """
    actions: Counter[str] = Counter()
    attributes: dict[str, Counter[str]] = {}
    for report in reports:
        for change in report.changes:
            actions[change.action] += 1
            name = f"{change.tag} {change.keyword}".rstrip()
            attributes.setdefault(name, Counter())[change.action] += 1
    written = sum(1 for r in reports if r.ok)
    return {
        "profile": PROFILE_NAME,
        "files_total": len(reports),
        "files_written": written,
        "files_skipped": len(reports) - written,
        "actions": dict(sorted(actions.items())),
        "attributes": {k: dict(sorted(v.items())) for k, v in sorted(attributes.items())},
        "files": [
            {
                "source": r.source,
                "target": r.target,
                "error": r.error,
                "changes": [
                    {"tag": c.tag, "keyword": c.keyword, "action": c.action} for c in r.changes
                ],
            }
            for r in reports
        ],
    }


def write_report(reports: Sequence[FileReport], path: Path) -> None:
    """Write :func:`report_dict` of ``reports`` as JSON to ``path`` (parent folders are made).

    Raises:
        OSError: If the file cannot be written.
    """
    atomic_write_text(path, json.dumps(report_dict(reports), indent=2) + "\n")


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


def _same_file(src: Path, dst: Path) -> bool:
    if src.resolve() == dst.resolve():
        return True
    try:
        return dst.exists() and os.path.samefile(src, dst)
    except OSError:
        return False


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


def _read_dicom(src: Path) -> Dataset:
    """Read a DICOM file: a Part 10 file, or a bare dataset that has a SOP Instance UID."""
    try:
        ds: Dataset = pydicom.dcmread(src)
    except InvalidDicomError:
        ds = _read_bare(src)
    meta = getattr(ds, "file_meta", None)
    is_dir = isinstance(meta, Dataset) and meta.get("MediaStorageSOPClassUID") == (
        MediaStorageDirectoryStorage
    )
    if is_dir or "DirectoryRecordSequence" in ds:
        raise DeidentificationError(
            "a DICOMDIR, a media index that lists patients, studies and file paths: not copied, since its record offsets cannot survive de-identification; the "
            "image files it lists are de-identified on their own. Fix: if an index is needed, "
            "build one from the output with pydicom.fileset.FileSet"
        )
    return ds


def _read_bare(src: Path) -> Dataset:
    """A dataset written without the Part 10 header (no preamble, no 'DICM'), if it is one."""
    reason = (
        "not a DICOM file: no 'DICM' Part 10 header, and no dataset with a SOP Instance UID "
        "could be read from it; not copied. Fix: nothing, if it is not an image; else check "
        "that the file is complete"
    )
    if not _starts_like_a_dataset(src):
        raise DeidentificationError(reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds: Dataset = pydicom.dcmread(src, force=True)
            uid = ds.get("SOPInstanceUID")
            has_class = "SOPClassUID" in ds
    except Exception:  # whatever garbage a forced read of a non-DICOM file trips over
        raise DeidentificationError(reason) from None
    if not uid or not has_class:
        raise DeidentificationError(reason)
    return ds


def _starts_like_a_dataset(src: Path) -> bool:
    """Whether the file opens with a group 0002 or 0008 tag, as a bare dataset does.

    Guards the forced read, which would otherwise parse any file (a PDF, an archive) as DICOM.
    """
    with src.open("rb") as fh:
        head = fh.read(4)
    if len(head) < 4:
        return False
    groups = {int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")}
    return bool(groups & {0x0002, 0x0008})


def _write(ds: Dataset, dst: Path) -> None:
    """Write ``ds`` in its own encoding, atomically: ``dst`` never holds a partial file."""
    if getattr(ds, "preamble", None):
        ds.preamble = bytes(128)  # may hold a TIFF header and thumbnail of the image
    with atomic_path(dst) as tmp:
        ds.save_as(tmp, enforce_file_format=False)
