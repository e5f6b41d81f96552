"""Member: a patient. The patient roster (ThoroughCare / Metriport flat file) is a Member file."""

import datetime as dt

from patient_etl.entities.contact import ADDRESS, EMAILS, PHONES
from patient_etl.entities.family import FAMILY
from patient_etl.entities.kinds import DATE, SEX, SSN, code
from patient_etl.entities.spec import Entity, Field, refers_to

RELATIONSHIP = code(
    {"self": "self", "spouse": "spouse", "child": "child", "other": "other"},
    "self, spouse, child or other (relationship to the family's subscriber)",
)

MEMBER = Entity(
    "member",
    key="member_id",
    describe="A patient (family member). The roster file is a Member file.",
    fields=(
        Field("member_id", aliases=("id", "external id", "externalId", "patient id", "patientId", "member id",
                                    "mrn", "medical record number", "mrn #", "medical record #",
                                    "patient mrn", "chart number", "account number", "patient account number"),
              describe="your stable ID for the patient; when empty, the patient is matched on name, "
                       "birth date and sex"),
        Field("first_name", required=True,
              aliases=("first name", "firstName", "patient first name", "first", "given name", "fname",
                       "member first name")),
        Field("middle_name", aliases=("middle name", "middleName", "middle", "middle initial")),
        Field("last_name", required=True,
              aliases=("last name", "lastName", "patient last name", "last", "surname", "family name", "lname",
                       "member last name")),
        Field("birth_date", DATE, required=True,
              aliases=("dob", "date of birth", "birthdate", "birthday", "birth date", "patient birthday",
                       "patient dob", "patient date of birth", "birth_dt", "dob (mm/dd/yyyy)",
                       "date of birth (mm/dd/yyyy)", "member dob", "d.o.b."),
              options={"min_date": dt.date(1900, 1, 1), "max_date": "today"}),
        Field("sex", SEX, required=True,
              aliases=("gender", "patient sex", "patient gender", "sex at birth", "genderAtBirth",
                                   "birth sex", "sex (m/f)", "gender (m/f)", "member gender")),
        Field("ssn", SSN, aliases=("social security number", "social security", "ss number", "ss#", "ssn #",
                                   "patient ssn", "social security #")),
        refers_to(FAMILY, required=False),
        Field("relationship", RELATIONSHIP, aliases=("relationship to subscriber", "relation")),
    ),
    groups=(ADDRESS, EMAILS, PHONES),
    match_on=("first_name", "last_name", "birth_date", "sex"),
    referred_as=("member id", "memberId", "patient id", "patientId", "patient", "mrn"),
)
