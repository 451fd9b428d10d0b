"""Generated captions name the model that wrote them: `captions.generated_by` holds the checkpoint
hash of the encoder that described the image (NULL for captions written by people).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('captions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('generated_by', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('captions', schema=None) as batch_op:
        batch_op.drop_column('generated_by')
