"""Care: an episode of care (an encounter or visit) of a member with a provider."""

import datetime as dt

from patient_etl.entities.kinds import DATE, ICD10_CODES
from patient_etl.entities.member import MEMBER
from patient_etl.entities.provider import PROVIDER
from patient_etl.entities.spec import Entity, Field, NotBefore, refers_to

CARE = Entity(
    "care",
    key="care_id",
    describe="An episode of care of a member with a provider; claims may point to it with care_id.",
    fields=(
        Field("care_id", aliases=("care id", "careId", "encounter id", "encounter", "visit id", "id"),
              describe="your stable ID for the episode of care; claims reference it"),
        refers_to(MEMBER),
        refers_to(PROVIDER),
        Field("start_date", DATE, required=True,
              aliases=("start date", "start", "admit date", "admission date", "visit date", "encounter date",
                       "from date"),
              options={"min_date": dt.date(1900, 1, 1)},
              describe="may be in the future (scheduled care)"),
        Field("end_date", DATE, aliases=("end date", "end", "stop", "discharge date", "to date"),
              options={"min_date": dt.date(1900, 1, 1)}, describe="not before start_date"),
        Field("care_type", aliases=("care type", "type", "encounter class", "encounter type", "visit type",
                                    "class"),
              describe="free text as the source names it (inpatient, outpatient, ambulatory, emergency...)"),
        Field("diagnosis_codes", ICD10_CODES, aliases=("diagnosis codes", "diagnosis code", "diagnoses",
                                                       "diagnosis", "icd10", "icd-10 codes", "dx", "dx codes")),
        Field("description", aliases=("reason", "reason for visit", "encounter description")),
    ),
    order_rules=(NotBefore("end_date", "start_date"),),
    referred_as=("care id", "careId", "encounter id", "encounter", "visit id"),
)
