/* A multi-threaded service for hot patching under load.
 *
 * NWORKERS threads (argv[2], default 8) call price() in a loop, sleeping argv[3] us
 * (default 200) between calls, and publish the result for input 7; the main thread is a TCP server on 127.0.0.1:argv[1] (0 = any port, printed on
 * stdout) answering one request per connection:
 *   "p N\n" -> price(N)
 *   "w\n"   -> the last value every worker computed, space-separated
 *   "c\n"   -> "<threads created so far> <price(7) in the newest one>"
 * With argv[4] = "churn", one more thread creates short-lived threads that call price()
 * back to back, so that threads appear while the loader is stopping the others.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXW 256
static volatile int last[MAXW];
static volatile int bias;
static int nap_us = 200;
static volatile long churned;
static volatile int churn_last;

int price(int x);

static void *short_lived(void *arg) {
    (void)arg;
    churn_last = price(7);
    return NULL;
}

static void *spawner(void *arg) {
    (void)arg;
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) == 0) {
            pthread_join(t, NULL);
            churned++;
        }
    }
    return NULL;
}

__attribute__((noipa)) int price(int x) {
    int r = x * 10;
    for (int i = 0; i < 4; i++) r += (x >> i) & 1;
    return r + bias;
}

static void *worker(void *arg) {
    long id = (long)arg;
    for (;;) {
        last[id] = price(7);
        usleep(nap_us);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int nworkers = argc > 2 ? atoi(argv[2]) : 8;
    if (nworkers > MAXW) nworkers = MAXW;
    if (argc > 3) nap_us = atoi(argv[3]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 512)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t len = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &len);
    for (long i = 0; i < nworkers; i++) {
        pthread_t t;
        pthread_create(&t, NULL, worker, (void *)i);
    }
    if (argc > 4 && strcmp(argv[4], "churn") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, spawner, NULL);
    }
    printf("port %d\n", ntohs(a.sin_port));
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            perror("accept");
            continue;
        }
        char buf[128];
        ssize_t n = read(c, buf, sizeof buf - 1);
        char out[MAXW * 12 + 2];
        int o = 0;
        if (n > 0) {
            buf[n] = 0;
            if (buf[0] == 'p') {
                o = snprintf(out, sizeof out, "%d\n", price(atoi(buf + 2)));
            } else if (buf[0] == 'c') {
                o = snprintf(out, sizeof out, "%ld %d\n", churned, churn_last);
            } else {
                for (int i = 0; i < nworkers; i++)
                    o += snprintf(out + o, sizeof out - o, "%d ", last[i]);
                out[o++] = '\n';
            }
            if (write(c, out, o) != o) perror("write");
        }
        close(c);
    }
}
