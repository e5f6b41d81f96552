"""Member: a patient. The patient roster (ThoroughCare / Metriport flat file) is a Member file."""

import datetime as dt

from patient_etl.entities.kinds import DATE, EMAIL, PHONE, SEX, SSN, STATE, ZIP, code
from patient_etl.entities.spec import Entity, Field, Group, Reference

ADDRESS = Group(
    "address",
    stored_as="addresses",
    fields=(
        Field("address_line1", aliases=("address line 1", "addressLine1", "address1", "address", "street",
                                         "street address")),
        Field("address_line2", aliases=("address line 2", "addressLine2", "address2", "apt", "unit")),
        Field("city", aliases=("town",)),
        Field("state", STATE, aliases=("state code", "province")),
        Field("zip", ZIP, aliases=("zip code", "zipcode", "postal code", "postcode", "zip5")),
    ),
    complete=("address_line1", "city", "state", "zip"),
)
EMAILS = Group("email", "emails", (Field("email", EMAIL, aliases=("e-mail", "email address", "e-mail address")),))
PHONES = Group(
    "phone", "phones",
    (Field("phone", PHONE, aliases=("phone number", "telephone", "tel", "mobile", "cell", "home phone")),),
)

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
                                    "mrn", "medical record number"),
              describe="your stable ID for the patient; when empty, the patient is matched on name, "
                       "birth date and sex"),
        Field("first_name", required=True,
              aliases=("first name", "firstName", "patient first name", "first", "given name", "fname")),
        Field("middle_name", aliases=("middle name", "middleName", "middle", "middle initial")),
        Field("last_name", required=True,
              aliases=("last name", "lastName", "patient last name", "last", "surname", "family name", "lname")),
        Field("birth_date", DATE, required=True,
              aliases=("dob", "date of birth", "birthdate", "birthday", "birth date", "patient birthday",
                       "patient dob", "patient date of birth"),
              options={"min_date": dt.date(1900, 1, 1), "max_date": "today"}),
        Field("sex", SEX, required=True,
              aliases=("gender", "patient sex", "patient gender", "sex at birth", "genderAtBirth")),
        Field("ssn", SSN, aliases=("social security number", "social security", "ss number")),
        Field("family_id", aliases=("family id", "familyId", "household id")),
        Field("relationship", RELATIONSHIP, aliases=("relationship to subscriber", "relation")),
    ),
    groups=(ADDRESS, EMAILS, PHONES),
    references=(Reference("family_id", "family"),),
    match_on=("first_name", "last_name", "birth_date", "sex"),
)
