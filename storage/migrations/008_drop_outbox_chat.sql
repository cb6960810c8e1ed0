-- outbox_chat (chat_id, state) serves no query: /stats counts conversions
-- through outbox_conversions, and nothing else looks rows up by channel. Every
-- queued row and every state change paid for keeping it.
DROP INDEX IF EXISTS outbox_chat;
