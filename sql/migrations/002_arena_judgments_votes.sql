-- arena_judgments before the ensemble judge: every judge had a rating and there was no liked column
alter table arena_judgments alter column rating drop not null;
alter table arena_judgments add column if not exists liked boolean;
