/*
 * Replica targets: identity and content. keeld is about to write a label (and later
 * the volume's data) over whatever the operator named; a typo must not cost a
 * filesystem. A target is refused unless it is new, reads as zeros at both ends, or
 * already belongs to keel; libblkid names what it found so the refusal says it.
 *
 * Only the first and the last MiB are read: that is where labels, superblocks and
 * partition tables live (GPT and md keep a copy at the end), and it keeps the probe
 * of a large device short. Data only in the middle of an unlabelled target is not
 * seen; libblkid's own probes still look where their formats say.
 */
#include "replica_probe.h"

#include <blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* blkid can match several signatures (a filesystem inside a partition table, stale
 * superblocks); the message names the first few. */
#define PROBE_MAX_SIGNATURES 3

static bool probe_type_ok(const struct stat *st)
{
	return S_ISREG(st->st_mode) || S_ISBLK(st->st_mode);
}

/* Identity from a stat; \p fd (or -1) is asked whether a block device is a loop
 * device, and over which file. */
static void probe_id_fill(const struct stat *st, int fd, struct keeld_replica_id *id)
{
	struct loop_info64 li;

	memset(id, 0, sizeof(*id));
	id->blockdev = S_ISBLK(st->st_mode);
	id->dev = id->blockdev ? st->st_rdev : st->st_dev;
	id->ino = id->blockdev ? 0 : st->st_ino;
	/* Other block devices answer ENOTTY/EINVAL, an unbound loop device ENXIO. */
	if (id->blockdev && fd >= 0 && ioctl(fd, LOOP_GET_STATUS64, &li) == 0) {
		id->loop = true;
		id->backing_dev = (dev_t)li.lo_device;
		id->backing_ino = (ino_t)li.lo_inode;
	}
}

int keeld_replica_id_of_fd(int fd, struct keeld_replica_id *id)
{
	struct stat st;

	if (fstat(fd, &st) != 0) {
		return -errno;
	}
	probe_id_fill(&st, fd, id);
	return 0;
}

static bool probe_id_is_file(const struct keeld_replica_id *id, dev_t dev, ino_t ino)
{
	return !id->blockdev && id->dev == dev && id->ino == ino;
}

bool keeld_replica_id_same(const struct keeld_replica_id *a, const struct keeld_replica_id *b)
{
	if (a->blockdev == b->blockdev && a->dev == b->dev && a->ino == b->ino) {
		return true;
	}
	if (a->loop && probe_id_is_file(b, a->backing_dev, a->backing_ino)) {
		return true;
	}
	if (b->loop && probe_id_is_file(a, b->backing_dev, b->backing_ino)) {
		return true;
	}
	return a->loop && b->loop && a->backing_dev == b->backing_dev &&
	       a->backing_ino == b->backing_ino;
}

/* Read up to \p len bytes at \p off; \return the bytes read (fewer at end of file)
 * or -errno. */
static ssize_t probe_read(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));

		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			return -errno;
		}
		if (n == 0) {
			break;
		}
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* Offset of the first non-zero byte of \p buf, or \p len when there is none. */
static size_t probe_first_nonzero(const uint8_t *buf, size_t len)
{
	size_t i = 0;

	/* Eight bytes a step; memcpy makes no alignment assumption. */
	for (; i + sizeof(uint64_t) <= len; i += sizeof(uint64_t)) {
		uint64_t w;

		memcpy(&w, buf + i, sizeof(w));
		if (w != 0) {
			break;
		}
	}
	for (; i < len; i++) {
		if (buf[i] != 0) {
			return i;
		}
	}
	return len;
}

/* "an ext4", "a dos": the article the name is read with. */
static const char *probe_article(const char *name)
{
	bool acronym = name[0] != '\0' && name[1] >= 'A' && name[1] <= 'Z';

	if (strchr("aeiouxAEIOUX", name[0]) != NULL ||
	    (acronym && strchr("FHLMNRS", name[0]) != NULL) || strncmp(name, "ntfs", 4) == 0) {
		return "an";
	}
	return "a";
}

/* What one blkid match is, for a message; false when it names nothing. */
static bool probe_describe_match(blkid_probe pr, char *out, size_t len)
{
	const char *type = NULL, *usage = NULL;

	if (blkid_probe_lookup_value(pr, "PTTYPE", &type, NULL) == 0) {
		snprintf(out, len, "%s %s partition table", probe_article(type), type);
		return true;
	}
	if (blkid_probe_lookup_value(pr, "TYPE", &type, NULL) != 0) {
		return false;
	}
	(void)blkid_probe_lookup_value(pr, "USAGE", &usage, NULL);
	if (usage != NULL && strcmp(usage, "filesystem") == 0) {
		snprintf(out, len, "%s %s filesystem", probe_article(type), type);
	} else if (usage != NULL && strcmp(usage, "raid") == 0) {
		snprintf(out, len, "%s %s RAID member signature", probe_article(type), type);
	} else if (usage != NULL && strcmp(usage, "crypto") == 0) {
		snprintf(out, len, "%s %s encrypted volume", probe_article(type), type);
	} else {
		snprintf(out, len, "%s %s signature", probe_article(type), type);
	}
	return true;
}

/*
 * Every signature libblkid finds on \p fd (filesystems, RAID members, crypto headers,
 * partition tables), described in \p what. \return how many, or -ENOMEM / -EIO.
 */
static int probe_signatures(int fd, char *what, size_t len)
{
	blkid_probe pr = blkid_new_probe();
	int found = 0, rc;

	if (pr == NULL) {
		return -ENOMEM;
	}
	what[0] = '\0';
	if (blkid_probe_set_device(pr, fd, 0, 0) != 0) {
		rc = -EIO;
		goto out_free_probe;
	}
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE);
	blkid_probe_enable_partitions(pr, 1);
	/* One match per call, chain by chain, the way wipefs lists them. */
	while ((rc = blkid_do_probe(pr)) == 0) {
		char one[80];
		size_t used = strlen(what);

		if (!probe_describe_match(pr, one, sizeof(one))) {
			continue;
		}
		if (found < PROBE_MAX_SIGNATURES) {
			snprintf(what + used, len - used, "%s%s", found > 0 ? " and " : "", one);
		}
		found++;
	}
	rc = rc < 0 ? -EIO : found;

out_free_probe:
	blkid_free_probe(pr);
	return rc;
}

/* Fill out->content and out->what from the open target \p fd; \p buf holds
 * KEELD_REPLICA_PROBE_SPAN bytes. */
static int probe_content(int fd, const char *path, struct keeld_replica_probe *out, uint8_t *buf,
			 char *err, size_t errlen)
{
	uint64_t nonzero = UINT64_MAX, tail_off;
	ssize_t head, tail;
	size_t at;
	int rc;

	head = probe_read(fd, buf, KEELD_REPLICA_PROBE_SPAN, 0);
	if (head < 0) {
		snprintf(err, errlen, "cannot read replica %s to look at it: %s", path,
			 strerror((int)-head));
		return (int)head;
	}
	rc = keel_nexus_label_inspect(buf, (size_t)head, &out->label);
	if (rc == 0) {
		out->content = KEELD_REPLICA_LABELLED;
		return 0;
	}
	if (rc != -ENODATA) {
		out->content = KEELD_REPLICA_DAMAGED;
		snprintf(out->what, sizeof(out->what), "%s", out->label.why);
		return 0;
	}
	/* A wiped former replica keeps keel's bitmap in the label area: not user data. */
	if (!out->label.wiped) {
		at = probe_first_nonzero(buf, (size_t)head);
		if (at < (size_t)head) {
			nonzero = at;
		}
	}
	tail_off = out->size > KEELD_REPLICA_PROBE_SPAN * 2u ? out->size - KEELD_REPLICA_PROBE_SPAN
							     : (uint64_t)head;
	if (nonzero == UINT64_MAX && out->size > tail_off) {
		tail = probe_read(fd, buf, KEELD_REPLICA_PROBE_SPAN, tail_off);
		if (tail < 0) {
			snprintf(err, errlen,
				 "cannot read the end of replica %s to look at it: "
				 "%s",
				 path, strerror((int)-tail));
			return (int)tail;
		}
		at = probe_first_nonzero(buf, (size_t)tail);
		if (at < (size_t)tail) {
			nonzero = tail_off + at;
		}
	}
	rc = probe_signatures(fd, out->what, sizeof(out->what));
	if (rc < 0) {
		snprintf(err, errlen,
			 "cannot look for filesystem signatures on replica %s: "
			 "libblkid failed (%s)",
			 path, strerror(-rc));
		return rc;
	}
	if (rc > 0) {
		out->content = KEELD_REPLICA_DATA;
	} else if (nonzero != UINT64_MAX) {
		out->content = KEELD_REPLICA_DATA;
		snprintf(out->what, sizeof(out->what), "data (a non-zero byte at offset %llu)",
			 (unsigned long long)nonzero);
	} else {
		out->content = KEELD_REPLICA_EMPTY;
	}
	return 0;
}

int keeld_replica_probe(const char *path, struct keeld_replica_probe *out, char *err, size_t errlen)
{
	struct stat st;
	uint8_t *buf;
	int fd, rc;

	memset(out, 0, sizeof(*out));
	if (stat(path, &st) != 0) {
		rc = -errno;
		if (rc != -ENOENT) {
			snprintf(err, errlen, "cannot look at replica %s: %s", path, strerror(-rc));
		}
		return rc;
	}
	if (!probe_type_ok(&st)) {
		snprintf(err, errlen, "replica %s is neither a regular file nor a block device",
			 path);
		return -EINVAL;
	}
	/* O_NONBLOCK: should a FIFO replace the file after the stat, open does not hang. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		rc = -errno;
		if (rc != -ENOENT) {
			snprintf(err, errlen, "cannot open replica %s to look at it: %s", path,
				 strerror(-rc));
		}
		return rc;
	}
	/* From here on everything is about what this fd is open on. */
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot look at replica %s: %s", path, strerror(-rc));
		goto out_close;
	}
	if (!probe_type_ok(&st)) {
		rc = -EINVAL;
		snprintf(err, errlen, "replica %s is neither a regular file nor a block device",
			 path);
		goto out_close;
	}
	probe_id_fill(&st, fd, &out->id);
	out->size = (uint64_t)st.st_size;
	if (out->id.blockdev && ioctl(fd, BLKGETSIZE64, &out->size) != 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot get the size of block device %s: %s", path,
			 strerror(-rc));
		goto out_close;
	}
	buf = malloc(KEELD_REPLICA_PROBE_SPAN);
	if (buf == NULL) {
		rc = -ENOMEM;
		snprintf(err, errlen, "out of memory looking at replica %s", path);
		goto out_close;
	}
	rc = probe_content(fd, path, out, buf, err, errlen);
	free(buf);

out_close:
	close(fd);
	return rc;
}

int keeld_replica_probe_check(const struct keeld_replica_probe *probe, const char *path,
			      const char *volume_uuid, bool force, char *err, size_t errlen)
{
	const struct keel_nexus_label_summary *l = &probe->label;

	if (force) {
		return 0;
	}
	switch (probe->content) {
	case KEELD_REPLICA_EMPTY:
		return 0;
	case KEELD_REPLICA_LABELLED:
		if (volume_uuid != NULL && strcmp(l->volume_uuid, volume_uuid) == 0) {
			return 0; /* a former member of this volume: the nexus rejoins it */
		}
		snprintf(err, errlen,
			 "replica %s carries the keel label of volume %s (uuid %s, "
			 "generation %llu): it may hold that volume's data; pass --force to "
			 "overwrite it",
			 path, l->volume_name, l->volume_uuid, (unsigned long long)l->generation);
		return -EEXIST;
	case KEELD_REPLICA_DAMAGED:
		snprintf(err, errlen,
			 "replica %s has a damaged keel label (%s); pass --force to "
			 "overwrite it",
			 path, probe->what);
		return -EEXIST;
	case KEELD_REPLICA_DATA:
	default:
		snprintf(err, errlen, "replica %s holds %s; pass --force to overwrite it", path,
			 probe->what);
		return -EEXIST;
	}
}

/* ------------------------------------------------------------------------------ */
/* Sets of replicas by identity                                                    */
/* ------------------------------------------------------------------------------ */

struct replica_set_entry {
	char *path;
	char *volume; /* NULL: a target of the request being checked */
	bool have_id;
	struct keeld_replica_id id;
};

struct keeld_replica_set {
	struct replica_set_entry *e;
	size_t n;
	size_t cap;
};

struct keeld_replica_set *keeld_replica_set_new(void)
{
	return calloc(1, sizeof(struct keeld_replica_set));
}

static struct replica_set_entry *set_append(struct keeld_replica_set *set, const char *path,
					    const char *volume)
{
	struct replica_set_entry *e;

	if (set->n == set->cap) {
		size_t cap = set->cap == 0 ? 16 : set->cap * 2;
		struct replica_set_entry *grown = realloc(set->e, cap * sizeof(*grown));

		if (grown == NULL) {
			return NULL;
		}
		set->e = grown;
		set->cap = cap;
	}
	e = &set->e[set->n];
	memset(e, 0, sizeof(*e));
	e->path = strdup(path);
	e->volume = volume != NULL ? strdup(volume) : NULL;
	if (e->path == NULL || (volume != NULL && e->volume == NULL)) {
		free(e->path);
		free(e->volume);
		return NULL;
	}
	set->n++;
	return e;
}

int keeld_replica_set_add(struct keeld_replica_set *set, const char *path, const char *volume)
{
	return set_append(set, path, volume) != NULL ? 0 : -ENOMEM;
}

int keeld_replica_set_add_target(struct keeld_replica_set *set, const char *path,
				 const struct keeld_replica_id *id)
{
	struct replica_set_entry *e = set_append(set, path, NULL);

	if (e == NULL) {
		return -ENOMEM;
	}
	e->id = *id;
	e->have_id = true;
	return 0;
}

void keeld_replica_set_stat(struct keeld_replica_set *set)
{
	for (size_t i = 0; i < set->n; i++) {
		struct replica_set_entry *e = &set->e[i];
		struct stat st;
		int fd = -1;

		if (e->have_id || stat(e->path, &st) != 0 || !probe_type_ok(&st)) {
			continue;
		}
		/* Only a block device is opened: to ask whether it is a loop device. */
		if (S_ISBLK(st.st_mode)) {
			fd = open(e->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
		}
		probe_id_fill(&st, fd, &e->id);
		e->have_id = true;
		if (fd >= 0) {
			close(fd);
		}
	}
}

int keeld_replica_set_check(const struct keeld_replica_set *set, const char *path,
			    const struct keeld_replica_id *id, char *err, size_t errlen)
{
	for (size_t i = 0; i < set->n; i++) {
		const struct replica_set_entry *e = &set->e[i];
		const char *kind;

		if (!e->have_id || !keeld_replica_id_same(&e->id, id)) {
			continue;
		}
		if (e->id.blockdev != id->blockdev || e->id.dev != id->dev ||
		    e->id.ino != id->ino) {
			kind = "the same file (through a loop device) as";
		} else {
			kind = id->blockdev ? "the same block device as" : "the same file as";
		}
		if (e->volume != NULL) {
			snprintf(err, errlen, "replica %s is %s %s of volume %s", path, kind,
				 e->path, e->volume);
		} else {
			snprintf(err, errlen, "replica %s is %s %s, given before it", path, kind,
				 e->path);
		}
		return -EEXIST;
	}
	return 0;
}

void keeld_replica_set_free(struct keeld_replica_set *set)
{
	if (set == NULL) {
		return;
	}
	for (size_t i = 0; i < set->n; i++) {
		free(set->e[i].path);
		free(set->e[i].volume);
	}
	free(set->e);
	free(set);
}
