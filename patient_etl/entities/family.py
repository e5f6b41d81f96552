"""Family: a household, the unit members belong to (the CareCloud seed's Family)."""

from patient_etl.entities.contact import ADDRESS
from patient_etl.entities.kinds import EMAIL, PHONE
from patient_etl.entities.spec import Entity, Field

FAMILY = Entity(
    "family",
    key="family_id",
    describe="A household; members point to it with family_id.",
    fields=(
        Field("family_id", aliases=("family id", "familyId", "household id", "household", "id", "external id"),
              describe="your stable ID for the family; members reference it"),
        Field("family_name", required=True, aliases=("family name", "familyName", "household name", "name"),
              describe="the household's name, usually the subscriber's last name"),
        Field("phone", PHONE, aliases=("phone number", "telephone", "tel", "home phone")),
        Field("email", EMAIL, aliases=("e-mail", "email address", "e-mail address")),
    ),
    groups=(ADDRESS,),
    referred_as=("family id", "familyId", "household id"),
)
