"""Contact groups shared by entities: addresses, e-mails and phones (indexed multi-value columns)."""

from patient_etl.entities.kinds import EMAIL, PHONE, STATE, ZIP
from patient_etl.entities.spec import Field, Group

ADDRESS = Group(
    "address",
    stored_as="addresses",
    fields=(
        Field("address_line1", aliases=(
            "address line 1", "addressLine1", "address1", "address", "street", "street address", "street 1",
            "street address 1", "street line 1", "address one", "address line one", "addr1", "addr line 1",
            "home address", "mailing address", "patient address", "patient address 1", "mailing address 1",
            "residential address")),
        Field("address_line2", aliases=(
            "address line 2", "addressLine2", "address2", "apt", "unit", "street 2", "street address 2",
            "street line 2", "address two", "address line two", "addr2", "addr line 2", "apt/suite",
            "apt suite", "apartment", "suite", "apt #", "unit #", "patient address 2", "mailing address 2")),
        Field("city", aliases=("town", "patient city", "mailing city", "home city")),
        Field("state", STATE, aliases=("state code", "province", "st", "patient state", "mailing state",
                                       "state/province")),
        Field("zip", ZIP, aliases=("zip code", "zipcode", "postal code", "postcode", "zip5", "zip/postal code",
                                   "patient zip", "patient zip code", "mailing zip")),
    ),
    complete=("address_line1", "city", "state", "zip"),
    numbered_lines=("address", "address line", "addressline", "street", "street address", "street line", "addr",
                    "addr line", "patient address", "mailing address"),
)
EMAILS = Group("email", "emails", (Field("email", EMAIL, aliases=(
    "e-mail", "email address", "e-mail address", "patient email", "patient email address", "primary email")),))
PHONES = Group(
    "phone", "phones",
    (Field("phone", PHONE, aliases=(
        "phone number", "telephone", "tel", "mobile", "cell", "home phone", "cell phone", "mobile phone",
        "mobile number", "cell number", "telephone number", "phone #", "primary phone", "patient phone",
        "patient phone number", "home phone number", "contact number", "work phone")),),
)
