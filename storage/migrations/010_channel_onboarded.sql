-- When the owner was sent the full onboarding (the landing snippet): once per
-- channel, the first time the bot is an admin there with the invite right.
-- Later rights edits get a short note or nothing.
ALTER TABLE channels ADD COLUMN onboarded_at REAL;
-- Channels tracked before this column existed had their onboarding already.
UPDATE channels SET onboarded_at = updated_at WHERE active = 1 AND can_invite_users = 1;
