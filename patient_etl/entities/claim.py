"""Claim: a bill for services to a member by a provider, optionally for one episode of care."""

import datetime as dt

from patient_etl.entities.kinds import AMOUNT, CPT_CODES, DATE, ICD10_CODES, code
from patient_etl.entities.spec import Entity, Field, Reference, reference

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
        reference("member_id"),
        reference("provider_id", "billing provider id"),
        Field("service_date", DATE, required=True,
              aliases=("service date", "date of service", "dos", "from date", "service from date"),
              options={"min_date": dt.date(1900, 1, 1), "max_date": "today"}),
        Field("billed_amount", AMOUNT, required=True,
              aliases=("billed", "billed amount", "amount billed", "total charge", "total charges", "charges",
                       "charge amount"),
              options={"min_amount": 0}, describe="0 or more; $ and thousands separators are dropped"),
        Field("care_id", aliases=("care id", "careId", "encounter id", "encounter", "visit id")),
        Field("payer_name", aliases=("payer name", "payer", "insurance", "insurer", "plan name", "payer id")),
        Field("procedure_codes", CPT_CODES, aliases=("procedure codes", "procedure code", "procedures", "cpt",
                                                     "cpt codes", "hcpcs", "cpt/hcpcs")),
        Field("diagnosis_codes", ICD10_CODES, aliases=("diagnosis codes", "diagnosis code", "diagnoses",
                                                       "diagnosis", "icd10", "icd-10 codes", "dx", "dx codes")),
        Field("status", CLAIM_STATUS, aliases=("claim status",),
              describe="the claim's status; map other vocabularies with a mapping template's value map"),
    ),
    references=(Reference("member_id", "member"), Reference("provider_id", "provider"),
                Reference("care_id", "care")),
)
