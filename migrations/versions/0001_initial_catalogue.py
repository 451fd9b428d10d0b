"""The initial catalogue: images, captions, index versions and the faiss id mapping.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('gallery', sa.String(length=1024), nullable=False),
    sa.Column('path', sa.String(length=2048), nullable=False),
    sa.Column('file_path', sa.String(length=4096), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('file_mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=True),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('gallery', 'path', name='uq_images_gallery_path')
    )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_images_content_hash'), ['content_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_gallery'), ['gallery'], unique=False)

    op.create_table('index_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('index_name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('gallery', sa.String(length=1024), nullable=False),
    sa.Column('encoder_name', sa.String(length=256), nullable=False),
    sa.Column('encoder_path', sa.String(length=4096), nullable=False),
    sa.Column('checkpoint_hash', sa.String(length=64), nullable=False),
    sa.Column('embed_dim', sa.Integer(), nullable=False),
    sa.Column('image_index_type', sa.String(length=128), nullable=False),
    sa.Column('caption_index_type', sa.String(length=128), nullable=False),
    sa.Column('image_count', sa.Integer(), nullable=False),
    sa.Column('caption_count', sa.Integer(), nullable=False),
    sa.Column('encoded_images', sa.Integer(), nullable=False),
    sa.Column('skipped_files', sa.Integer(), nullable=False),
    sa.Column('build_seconds', sa.Float(), nullable=False),
    sa.Column('directory', sa.String(length=4096), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('index_name', 'version', name='uq_index_versions_name_version')
    )
    with op.batch_alter_table('index_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_index_versions_index_name'), ['index_name'], unique=False)

    op.create_table('captions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('captions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_captions_image_id'), ['image_id'], unique=False)

    op.create_table('index_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=8), nullable=False),
    sa.Column('faiss_id', sa.BigInteger(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('caption_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['caption_id'], ['captions.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['index_versions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('index_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_index_entries_image_id'), ['image_id'], unique=False)
        batch_op.create_index('ix_index_entries_lookup', ['version_id', 'modality', 'faiss_id'], unique=True)



def downgrade() -> None:
    with op.batch_alter_table('index_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_index_entries_lookup')
        batch_op.drop_index(batch_op.f('ix_index_entries_image_id'))

    op.drop_table('index_entries')
    with op.batch_alter_table('captions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_captions_image_id'))

    op.drop_table('captions')
    with op.batch_alter_table('index_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_index_versions_index_name'))

    op.drop_table('index_versions')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_gallery'))
        batch_op.drop_index(batch_op.f('ix_images_content_hash'))

    op.drop_table('images')
