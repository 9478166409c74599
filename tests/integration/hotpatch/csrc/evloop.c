/* A single-threaded event loop: its only thread sits in epoll_wait(2), which a ptrace stop
 * interrupts with EINTR (the kernel never restarts it). The loop retries on EINTR, as event
 * loops do, and counts them. Per input line N it prints "probe(N) eintr-count".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

__attribute__((noipa)) int probe(int x) { return x + 1 + (x & 3); }

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    printf("ready\n");
    long eintr = 0;
    for (;;) {
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, -1);
        if (n < 0) {
            if (errno == EINTR) {
                eintr++;
                continue;
            }
            perror("epoll_wait");
            return 1;
        }
        char buf[64];
        ssize_t r = read(0, buf, sizeof buf - 1);
        if (r <= 0) return 0;
        buf[r] = 0;
        printf("%d %ld\n", probe(atoi(buf)), eintr);
    }
}
