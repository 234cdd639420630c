/* SYSREF: a table of files reached from outside by sysid, as a kernel
 * reaches its objects by descriptor or handle number.
 *
 * The program runs a small command language, from the file named by its
 * argument ("-" for stdin), or else from the script built in below:
 *   open NAME [under ID]  a new file, its sysid shown and bound to $NAME
 *   use ID                sysref_lookup_class: the file, or "refused"
 *   find NAME             by name, through a directory that holds no reference
 *   close ID              drop the file's open reference
 *   burst N               N short-lived files whose sysids nobody sees
 *   churn N               N files opened (sysid shown) and closed
 *   list                  the active files, in sysid order (sysref_foreach)
 *   stats                 sysref_stats of the class and of every class
 *   expect found|refused|recycled|retired   checks the command before
 * ID is a number or $NAME. What it shows: a stale sysid is refused; a sysid
 * that was seen never names another object (its object is destroyed, the
 * sysid retired), while objects whose sysids nobody saw are recycled with
 * their sysids, so a burst of them costs almost no constructions; a parent
 * stays alive while a child holds it. It exits 1 if any expectation failed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysref/sysref.h>

#define DIR_SLOTS 64    /* files with a name at once */
#define MAX_SHOWN 4096  /* sysids shown in one run */
#define BURST_BATCH 16  /* files alive at once in a burst */

struct file {
	struct sysref sr;
	char name[24];
	long uses;
	int slot;       /* in the directory, or -1 */
	int open;       /* holds its open reference (the creator's) */
	sysid_t shown;  /* the sysid, once shown; 0 before */
};

/* A name directory of pointers without references. terminate takes a file
 * out under the lock, so find's sysref_get_not_zero under the same lock
 * never meets a file that is gone: the kernel's pattern for weak tables. */
static struct file *directory[DIR_SLOTS];
static pthread_mutex_t directory_lock = PTHREAD_MUTEX_INITIALIZER;

static sysid_t shown[MAX_SHOWN]; /* every sysid shown, to catch one coming back */
static size_t nshown;
static sysid_t gone[MAX_SHOWN];  /* sysids of files terminated after they were shown */
static size_t ngone;
static unsigned long constructed, destructed, terminated;

/* The constructed state, in which the cache hands a file out. */
static void file_reset(struct file *f)
{
	memset(f->name, 0, sizeof(f->name));
	f->uses = 0;
	f->slot = -1;
	f->open = 0;
	f->shown = 0;
}

static int file_ctor(void *obj, void *priv, int flags)
{
	(void)priv;
	(void)flags;
	file_reset(obj);
	constructed++;
	return 0;
}

static void file_dtor(void *obj, void *priv)
{
	(void)obj;
	(void)priv;
	destructed++;
}

/* The last active reference went: out of the directory, back to the
 * constructed state so that the cache can hand the file out again. */
static void file_terminate(void *obj)
{
	struct file *f = obj;
	pthread_mutex_lock(&directory_lock);
	if (f->slot >= 0)
		directory[f->slot] = NULL;
	pthread_mutex_unlock(&directory_lock);
	if (f->shown && ngone < MAX_SHOWN)
		gone[ngone++] = f->shown;
	terminated++;
	file_reset(f);
}

static struct sysref_class file_class = {
	.name = "file",
	.objsize = sizeof(struct file),
	.offset = offsetof(struct file, sr),
	.ctor = file_ctor,
	.dtor = file_dtor,
	.terminate = file_terminate,
};

static int failures;
static int last_found;           /* the last open/use/find/close found its file */
static unsigned long burst_n, burst_built;
static unsigned long churn_n, churn_retired;

static struct file *file_of(struct sysref *sr)
{
	return sysref_entry(sr, struct file, sr);
}

/* Shows a file's sysid (sysref_sysid: from now on it is seen) and checks
 * that no earlier file ever had it. */
static sysid_t show_id(struct file *f)
{
	sysid_t id = sysref_sysid(&f->sr);
	for (size_t i = 0; i < nshown; i++)
		if (shown[i] == id) {
			printf("  FAILED: sysid %llu came back\n", (unsigned long long)id);
			failures++;
		}
	if (nshown < MAX_SHOWN)
		shown[nshown++] = id;
	f->shown = id;
	return id;
}

/* $NAME -> the sysid shown when NAME was opened; else a number. */
static struct { char name[24]; sysid_t id; } vars[DIR_SLOTS];

static sysid_t parse_id(const char *s)
{
	if (s && *s == '$') {
		for (int i = 0; i < DIR_SLOTS; i++)
			if (strcmp(vars[i].name, s + 1) == 0)
				return vars[i].id;
		return 0;
	}
	return s ? strtoull(s, NULL, 0) : 0;
}

static void bind_var(const char *name, sysid_t id)
{
	for (int i = 0; i < DIR_SLOTS; i++)
		if (vars[i].name[0] == 0 || strcmp(vars[i].name, name) == 0) {
			snprintf(vars[i].name, sizeof(vars[i].name), "%s", name);
			vars[i].id = id;
			return;
		}
}

/* A reference on the file called name, or NULL. */
static struct file *find(const char *name)
{
	struct file *f = NULL;
	pthread_mutex_lock(&directory_lock);
	for (int i = 0; i < DIR_SLOTS && !f; i++)
		if (directory[i] && strcmp(directory[i]->name, name) == 0 &&
		    sysref_get_not_zero(&directory[i]->sr))
			f = directory[i];
	pthread_mutex_unlock(&directory_lock);
	return f;
}

static void cmd_open(const char *name, const char *under, const char *parent_id)
{
	struct file *f, *other, *parent = NULL;
	int slot = -1;

	last_found = 0;
	f = sysref_alloc(&file_class);
	if (f == NULL) {
		perror("  sysref_alloc");
		failures++;
		return;
	}
	if ((other = find(name)) != NULL) {
		printf("open %s: refused, %s is open already (the creation is aborted)\n", name, name);
		sysref_put(&other->sr);
		sysref_put(&f->sr); /* the creator's only reference: back to the cache */
		return;
	}
	if (under && (parent = sysref_lookup(parse_id(parent_id))) == NULL) {
		printf("open %s: refused, no parent %s\n", name, parent_id);
		sysref_put(&f->sr);
		return;
	}
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->open = 1;
	if (parent) {
		sysref_set_parent(&f->sr, &parent->sr); /* f holds parent from now on */
		sysref_put(&parent->sr);                 /* the lookup's reference */
	}
	pthread_mutex_lock(&directory_lock);
	for (int i = 0; i < DIR_SLOTS && slot < 0; i++)
		if (directory[i] == NULL)
			directory[slot = i] = f;
	f->slot = slot;
	pthread_mutex_unlock(&directory_lock);
	sysref_activate(&f->sr);
	bind_var(name, show_id(f));
	printf("open %s: sysid %llu%s%s\n", name, (unsigned long long)f->shown,
	    parent ? " under " : "", parent ? parent->name : "");
	last_found = 1;
}

static void cmd_use(const char *arg)
{
	sysid_t id = parse_id(arg);
	/* Ids come from outside: ask for a file, not whatever has that id. */
	struct file *f = sysref_lookup_class(&file_class, id);
	struct sysref *p;

	last_found = f != NULL;
	if (f == NULL) {
		printf("use %s (%llu): refused, no active file has that sysid\n", arg,
		    (unsigned long long)id);
		return;
	}
	f->uses++;
	p = sysref_parent(&f->sr);
	printf("use %s (%llu): %s, used %ld times%s%s%s\n", arg, (unsigned long long)id, f->name,
	    f->uses, f->open ? "" : ", closed but held by a child",
	    p ? ", parent " : "", p ? file_of(p)->name : "");
	sysref_put(&f->sr);
}

static void cmd_find(const char *name)
{
	struct file *f = find(name);

	last_found = f != NULL;
	if (f == NULL) {
		printf("find %s: not in the directory\n", name);
		return;
	}
	printf("find %s: sysid %llu\n", name, (unsigned long long)f->shown);
	sysref_put(&f->sr);
}

static void cmd_close(const char *arg)
{
	sysid_t id = parse_id(arg);
	struct file *f = sysref_lookup(id);

	last_found = f != NULL && f->open;
	if (!last_found) {
		printf("close %s (%llu): refused, %s\n", arg, (unsigned long long)id,
		    f ? "closed already" : "no active file has that sysid");
		if (f)
			sysref_put(&f->sr);
		return;
	}
	printf("close %s (%llu): %s\n", arg, (unsigned long long)id, f->name);
	f->open = 0;
	sysref_put(&f->sr); /* the lookup's reference */
	sysref_put(&f->sr); /* the open one: terminate runs unless a child holds it */
}

static int get_stats(struct sysref_class *cls, struct sysref_stats *st)
{
	if (sysref_stats(cls, st) != 0) {
		perror("  sysref_stats");
		failures++;
		return -1;
	}
	return 0;
}

static void cmd_burst(unsigned long n)
{
	struct sysref_stats before, after;
	struct file *batch[BURST_BATCH];

	if (get_stats(&file_class, &before) != 0)
		return;
	for (unsigned long done = 0; done < n; done += BURST_BATCH) {
		for (int i = 0; i < BURST_BATCH; i++) {
			if ((batch[i] = sysref_alloc(&file_class)) == NULL) {
				perror("  sysref_alloc");
				failures++;
				return;
			}
			sysref_activate(&batch[i]->sr);
		}
		for (int i = 0; i < BURST_BATCH; i++)
			sysref_put(&batch[i]->sr);
	}
	if (get_stats(&file_class, &after) != 0)
		return;
	burst_n = after.allocs - before.allocs;
	burst_built = after.constructions - before.constructions;
	printf("burst %lu: %lu files, %lu constructed, the others recycled with their sysids\n", n,
	    burst_n, burst_built);
}

static void cmd_churn(unsigned long n)
{
	struct sysref_stats before, after;

	if (get_stats(&file_class, &before) != 0)
		return;
	for (unsigned long i = 0; i < n; i++) {
		struct file *f = sysref_alloc(&file_class);
		if (f == NULL) {
			perror("  sysref_alloc");
			failures++;
			return;
		}
		sysref_activate(&f->sr);
		show_id(f);
		sysref_put(&f->sr);
	}
	if (get_stats(&file_class, &after) != 0)
		return;
	churn_n = n;
	churn_retired = after.retired - before.retired;
	printf("churn %lu: sysids up to %llu shown, %lu retired, %llu constructed\n", n,
	    (unsigned long long)(nshown ? shown[nshown - 1] : 0), churn_retired,
	    (unsigned long long)(after.constructions - before.constructions));
}

/* foreach holds a reference only during the call: keep one of our own. */
static int collect(void *obj, void *arg)
{
	struct file **out = arg;
	int i = 0;
	while (out[i])
		i++;
	if (i == DIR_SLOTS)
		return 1; /* full: stop the walk */
	sysref_get(&((struct file *)obj)->sr);
	out[i] = obj;
	return 0;
}

static void cmd_list(void)
{
	struct file *files[DIR_SLOTS + 1] = {0};
	int r = sysref_foreach(&file_class, collect, files);

	printf("list:%s\n", r == 1 ? " (first files only)" : "");
	for (int i = 0; files[i]; i++) {
		struct sysref *p = sysref_parent(&files[i]->sr);
		printf("  %llu %s, used %ld times%s%s\n",
		    (unsigned long long)sysref_sysid(&files[i]->sr), files[i]->name, files[i]->uses,
		    p ? ", parent " : "", p ? file_of(p)->name : "");
		sysref_put(&files[i]->sr);
	}
}

static void print_stats(const char *what, const struct sysref_stats *st)
{
	printf("  %s: live %llu (creating %llu, active %llu, terminating %llu), cached %llu\n"
	    "    allocs %llu, lookups %llu (missed %llu), constructions %llu, destructions %llu,"
	    " retired %llu\n", what,
	    (unsigned long long)st->live, (unsigned long long)st->creating,
	    (unsigned long long)st->active, (unsigned long long)st->terminating,
	    (unsigned long long)st->cached, (unsigned long long)st->allocs,
	    (unsigned long long)st->lookups, (unsigned long long)st->lookup_misses,
	    (unsigned long long)st->constructions, (unsigned long long)st->destructions,
	    (unsigned long long)st->retired);
}

static void cmd_stats(void)
{
	struct sysref_stats cls, all;
	if (get_stats(&file_class, &cls) != 0 || get_stats(NULL, &all) != 0)
		return;
	printf("stats:\n");
	print_stats("class file", &cls);
	print_stats("every class", &all);
	printf("  seen by the class's ctor/dtor/terminate: %lu constructed, %lu destructed,"
	    " %lu terminated\n", constructed, destructed, terminated);
}

static void expect(const char *what)
{
	int ok;

	if (what && strcmp(what, "found") == 0) {
		ok = last_found;
	} else if (what && strcmp(what, "refused") == 0) {
		ok = !last_found;
	} else if (what && strcmp(what, "recycled") == 0) {
		ok = burst_n > 0 && burst_built * 10 < burst_n; /* under a tenth constructed */
	} else if (what && strcmp(what, "retired") == 0) {
		ok = churn_n > 0 && churn_retired == churn_n;
		for (size_t i = 0; i < ngone; i++) { /* no sysid of a gone file is found */
			struct file *f = sysref_lookup(gone[i]);
			if (f) {
				printf("  sysid %llu still found\n", (unsigned long long)gone[i]);
				sysref_put(&f->sr);
				ok = 0;
			}
		}
	} else {
		printf("expect %s: unknown expectation\n", what ? what : "(nothing)");
		failures++;
		return;
	}
	printf("  expect %s: %s\n", what, ok ? "ok" : "FAILED");
	failures += !ok;
}

static void run(char *line)
{
	char *save, *cmd, *a, *b, *c;

	line[strcspn(line, "#\r\n")] = 0;
	if ((cmd = strtok_r(line, " \t", &save)) == NULL)
		return;
	a = strtok_r(NULL, " \t", &save);
	b = strtok_r(NULL, " \t", &save);
	c = strtok_r(NULL, " \t", &save);
	if (strcmp(cmd, "open") == 0 && a && (!b || (strcmp(b, "under") == 0 && c)))
		cmd_open(a, b, c);
	else if (strcmp(cmd, "use") == 0 && a)
		cmd_use(a);
	else if (strcmp(cmd, "find") == 0 && a)
		cmd_find(a);
	else if (strcmp(cmd, "close") == 0 && a)
		cmd_close(a);
	else if (strcmp(cmd, "burst") == 0 && a)
		cmd_burst(strtoul(a, NULL, 0));
	else if (strcmp(cmd, "churn") == 0 && a && strtoul(a, NULL, 0) < MAX_SHOWN - nshown)
		cmd_churn(strtoul(a, NULL, 0));
	else if (strcmp(cmd, "list") == 0)
		cmd_list();
	else if (strcmp(cmd, "stats") == 0)
		cmd_stats();
	else if (strcmp(cmd, "expect") == 0)
		expect(a);
	else {
		printf("%s: not a command (or bad arguments)\n", cmd);
		failures++;
	}
}

static const char script[] =
	"open alpha\n"
	"open beta\n"
	"open gamma under $alpha\n"
	"open alpha             # a second alpha: its creation is aborted\n"
	"expect refused\n"
	"use $alpha\n"
	"expect found\n"
	"find gamma\n"
	"expect found\n"
	"use $gamma\n"
	"list\n"
	"close $beta\n"
	"use $beta              # stale: beta is gone and its sysid retired\n"
	"expect refused\n"
	"close $beta\n"
	"expect refused\n"
	"close $alpha           # gamma still holds alpha\n"
	"use $alpha\n"
	"expect found\n"
	"close $gamma           # and lets go of alpha as it goes\n"
	"use $alpha\n"
	"expect refused\n"
	"find gamma\n"
	"expect refused\n"
	"burst 20000            # nobody sees these sysids: recycled\n"
	"expect recycled\n"
	"churn 500              # these are shown: each one retired\n"
	"expect retired\n"
	"use $beta\n"
	"expect refused\n"
	"stats\n";

int main(int argc, char **argv)
{
	char line[256];

	if (argc > 1) {
		FILE *in = strcmp(argv[1], "-") == 0 ? stdin : fopen(argv[1], "r");
		if (in == NULL) {
			perror(argv[1]);
			return 2;
		}
		while (fgets(line, sizeof(line), in))
			run(line);
		if (in != stdin)
			fclose(in);
	} else {
		for (const char *p = script; *p;) {
			size_t n = strcspn(p, "\n");
			snprintf(line, sizeof(line), "%.*s", (int)n, p);
			run(line);
			p += n + (p[n] == '\n');
		}
	}
	printf("%s\n", failures ? "FAILED" : "every expectation held");
	return failures ? 1 : 0;
}
