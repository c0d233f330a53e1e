"""The header quasi-identifiers, by name: the columns of ``scan``'s risk table (:mod:`deidpipe.risk.qi` reads
them from a header) and of a release's risk target (:mod:`deidpipe.risk.target`). Apart so that the policy can
name them without importing the header code that reads them."""

from __future__ import annotations

QI_COLUMNS = ("age", "sex", "study_year", "institution", "station", "device_serial", "manufacturer_model",
              "body_part")
#: The table's first column: one row per patient (a keyed token of the patient), or per study.
PATIENT = "patient"
STUDY = "study"
UNITS = (PATIENT, STUDY)
