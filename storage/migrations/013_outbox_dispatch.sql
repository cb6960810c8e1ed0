-- /stats shows, next to the delivered conversions, how many AdTarget passed on to an
-- ad platform (outbox.dispatched = 1) and how many it skipped (0), and its most
-- frequent warning; both read from indexes alone, like the rest of /stats.

-- dispatched joins the conversions index as a trailing column: the delivered count's
-- range walk then splits it for free. The entry is rewritten at delivery anyway (the
-- state changes), so sending a conversion costs no extra index write.
DROP INDEX IF EXISTS outbox_conversions;
CREATE INDEX outbox_conversions ON outbox(chat_id, state, event_time_ms, dispatched)
    WHERE kind = 'conversion';

-- Warnings per channel in GROUP BY order (no sort). Only delivered conversions AdTarget
-- warned about enter it, at delivery: nothing is added when a join is queued.
CREATE INDEX outbox_warnings ON outbox(chat_id, warning, event_time_ms)
    WHERE kind = 'conversion' AND warning IS NOT NULL;
