/* wl_run: runs one workload and reports its rusage, for workloads.py.
 *
 *   WL_PRELOAD=LIB wl_run TIMEOUT_S PROGRAM ARGS...
 *
 * Why not os.wait4() in Python: a child spawned by Python (vfork + exec)
 * inherits Python's RSS high-water mark (~20 MiB) into its ru_maxrss, which
 * would floor every small workload's peak RSS. This launcher is small, and
 * it fork()s, so its child's peak starts at this process's ~1 MiB.
 *
 * The child gets LD_PRELOAD=$WL_PRELOAD (if set and non-empty) and stdout
 * on /dev/null; stderr is inherited. Prints one line on stdout:
 * "status=S wall_ns=N maxrss_kib=K minflt=F cpu_ns=C", S the wait status.
 * After TIMEOUT_S seconds the child is killed (a hung allocator). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t child;

static void on_alarm(int sig)
{
	(void)sig;
	kill(child, SIGKILL);
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: WL_PRELOAD=LIB %s TIMEOUT_S PROGRAM ARGS...\n", argv[0]);
		return 2;
	}
	const char *preload = getenv("WL_PRELOAD");
	int64_t t0 = now_ns();
	child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0) {
		int fd = open("/dev/null", O_WRONLY);
		if (fd >= 0)
			dup2(fd, 1);
		unsetenv("WL_PRELOAD");
		if (preload && *preload)
			setenv("LD_PRELOAD", preload, 1);
		else
			unsetenv("LD_PRELOAD");
		execv(argv[2], argv + 2);
		perror(argv[2]);
		_exit(127);
	}
	signal(SIGALRM, on_alarm);
	alarm((unsigned)atoi(argv[1]));
	int status;
	struct rusage ru;
	while (wait4(child, &status, 0, &ru) < 0) {
		if (errno != EINTR) {  /* EINTR: the alarm fired; wait on for the killed child */
			perror("wait4");
			return 2;
		}
	}
	int64_t wall = now_ns() - t0;
	int64_t cpu = ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
		      ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
	printf("status=%d wall_ns=%lld maxrss_kib=%ld minflt=%ld cpu_ns=%lld\n", status, (long long)wall,
	       ru.ru_maxrss, ru.ru_minflt, (long long)cpu);
	return 0;
}
