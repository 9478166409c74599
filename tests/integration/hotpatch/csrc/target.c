/* Test target for hot patching: a PIE that answers one command per line on stdin.
 * Built by the tests with gcc -O2 -fcf-protection=full (so functions start with endbr64).
 *
 *   c N   static compute(N)       a non-exported function of the PIE, with a .cold part
 *   d N   demo_value(N)           a function of libdemo.so (built by the tests)
 *   a S   inet_aton(S)            a libc function
 *   v N   vsum(3, ...)            a variadic function called with doubles
 *   t     tiny()                  shorter than a jump
 *   h     hold() calls so far     hold() never returns: a thread sleeps inside it
 *   s     start a thread spinning in victim(), then interrupt it with a signal whose
 *         handler never returns: victim() is active only through the signal frame
 *   f     fork: prints the child's pid; the child (a copy of this memory, patches
 *         included) sleeps until killed
 *
 * With argument "single" there is no holder thread: the main thread is the only one, so it
 * is the one the loader borrows while it is blocked in read(2).
 *
 * stdin is read with raw read(2) so that the main thread sits blocked in a syscall; an
 * interrupted read would print "ERR" instead of being silently retried.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int demo_value(int x);

static volatile int guard;
static volatile long hold_loops;

/* Calling a cold function on the error path makes gcc split it into compute.cold. */
__attribute__((cold, noinline)) static void report(int x) {
    fprintf(stderr, "compute: impossible input %d\n", x);
}

__attribute__((noipa)) static int compute(int x) {
    if (x == -424242) {
        report(x);
        abort();
    }
    return x * 2 + 1 + guard;
}

__attribute__((noipa)) double vsum(int n, ...) {
    va_list ap;
    double s = 0;
    va_start(ap, n);
    for (int i = 0; i < n; i++) s += va_arg(ap, double);
    va_end(ap);
    return s;
}

__attribute__((noipa)) static int tiny(void) { return 0; }

__attribute__((noipa)) static void hold(void) {
    for (;;) {
        sleep(1000);
        hold_loops++;
    }
}

static volatile int victim_go;

__attribute__((noipa)) static void victim(void) {
    while (!victim_go) __asm__ volatile("pause");
}

static void on_usr1(int sig) {
    (void)sig;
    for (;;) pause();
}

static void *victim_thread(void *arg) {
    (void)arg;
    victim();
    return NULL;
}

static void *holder(void *arg) {
    (void)arg;
    hold();
    return NULL;
}

int main(int argc, char **argv) {
    char buf[256];
    pthread_t th;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2 || strcmp(argv[1], "single") != 0) pthread_create(&th, NULL, holder, NULL);
    printf("ready\n");
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n < 0) {
            printf("ERR %s\n", strerror(errno));
            continue;
        }
        if (n == 0) return 0;
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        struct in_addr a;
        switch (buf[0]) {
        case 'c': printf("%d\n", compute(atoi(buf + 2))); break;
        case 'd': printf("%d\n", demo_value(atoi(buf + 2))); break;
        case 'a': printf("%d\n", inet_aton(buf + 2, &a)); break;
        case 'v': printf("%.3f\n", vsum(3, 1.5, 2.25, (double)atoi(buf + 2))); break;
        case 't': printf("%d\n", tiny()); break;
        case 'h': printf("%ld\n", hold_loops); break;
        case 's': {
            pthread_t v;
            signal(SIGUSR1, on_usr1);
            pthread_create(&v, NULL, victim_thread, NULL);
            usleep(20000); /* let it spin inside victim() */
            pthread_kill(v, SIGUSR1);
            printf("ok\n");
            break;
        }
        case 'f': {
            fflush(stdout);
            pid_t child = fork();
            if (child == 0) {
                close(0);
                for (;;) pause();
            }
            printf("%d\n", (int)child);
            break;
        }
        default: printf("?\n");
        }
    }
}
