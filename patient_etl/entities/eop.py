"""EOP: an explanation of payment, one payment (or denial) on a claim."""

import datetime as dt

from patient_etl.entities.claim import CLAIM
from patient_etl.entities.kinds import ADJUSTMENT_CODES, AMOUNT, DATE
from patient_etl.entities.spec import Entity, Field, TotalNotAbove, refers_to

EOP = Entity(
    "eop",
    key="eop_id",
    describe="An explanation of payment on a claim.",
    fields=(
        Field("eop_id", aliases=("eop id", "eopId", "eob id", "payment id", "remittance id", "id"),
              describe="your stable ID for the payment"),
        refers_to(CLAIM),
        Field("payment_date", DATE, required=True,
              aliases=("payment date", "paid date", "date paid", "check date", "remit date", "remittance date"),
              options={"min_date": dt.date(1900, 1, 1), "max_date": "today"}),
        Field("paid_amount", AMOUNT, required=True,
              aliases=("paid", "paid amount", "amount paid", "payment amount", "payment", "plan paid"),
              options={"min_amount": 0}, describe="0 or more (0 for a denial)"),
        Field("patient_responsibility", AMOUNT,
              aliases=("patient responsibility", "patient resp", "patient owes", "patient amount",
                       "member responsibility"),
              options={"min_amount": 0}),
        Field("adjustment_amount", AMOUNT, aliases=("adjustment amount", "adjustment", "adjustments",
                                                    "adjusted amount"),
              describe="may be negative (a reversal)"),
        Field("adjustment_codes", ADJUSTMENT_CODES,
              aliases=("adjustment codes", "adjustment code", "adjustment reason codes", "reason codes", "carc")),
        Field("check_number", aliases=("check no", "check number", "check #", "check", "eft number",
                                       "eft trace number", "trace number")),
    ),
    totals=(TotalNotAbove("paid_amount", "claim_id", "billed_amount",
                          says="payments on claim {key} add up to {total}, more than its billed amount {limit}"),),
)
