"""Contact groups shared by entities: addresses, e-mails and phones (indexed multi-value columns)."""

from patient_etl.entities.kinds import EMAIL, PHONE, STATE, ZIP
from patient_etl.entities.spec import Field, Group

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
