"""Claim: a bill for services to a member by a provider, optionally for one episode of care."""

import datetime as dt

from patient_etl.entities.care import CARE
from patient_etl.entities.kinds import AMOUNT, CPT_CODES, DATE, ICD10_CODES, code
from patient_etl.entities.member import MEMBER
from patient_etl.entities.provider import PROVIDER
from patient_etl.entities.spec import Entity, Field, refers_to

CLAIM_STATUS = code(
    {s: s for s in ("billed", "pending", "paid", "denied", "adjusted", "closed", "void")} | {"voided": "void"},
    "billed, pending, paid, denied, adjusted, closed or void (any case)",
)

CLAIM = Entity(
    "claim",
    key="claim_id",
    describe="A bill for services; EOPs point to it with claim_id.",
    fields=(
        Field("claim_id", aliases=("claim id", "claimId", "claim number", "claim no", "claim #", "id"),
              describe="your stable ID for the claim; EOPs reference it"),
        refers_to(MEMBER),
        refers_to(PROVIDER, "billing provider id"),
        Field("service_date", DATE, required=True,
              aliases=("service date", "date of service", "dos", "from date", "service from date"),
              options={"min_date": dt.date(1900, 1, 1), "max_date": "today"}),
        Field("billed_amount", AMOUNT, required=True,
              aliases=("billed", "billed amount", "amount billed", "total charge", "total charges", "charges",
                       "charge amount"),
              options={"min_amount": 0}, describe="0 or more; $ and thousands separators are dropped"),
        refers_to(CARE, required=False),
        Field("payer_name", aliases=("payer name", "payer", "insurance", "insurer", "plan name", "payer id")),
        Field("procedure_codes", CPT_CODES, aliases=("procedure codes", "procedure code", "procedures", "cpt",
                                                     "cpt codes", "hcpcs", "cpt/hcpcs")),
        Field("diagnosis_codes", ICD10_CODES, aliases=("diagnosis codes", "diagnosis code", "diagnoses",
                                                       "diagnosis", "icd10", "icd-10 codes", "dx", "dx codes")),
        Field("status", CLAIM_STATUS, aliases=("claim status",),
              describe="the claim's status; map other vocabularies with a mapping template's value map"),
    ),
    referred_as=("claim id", "claimId", "claim number", "claim no", "claim #"),
)
