/* The pod sandbox's process: it holds the pod's namespaces open, reaps the zombies of processes that end up its
 * children (it is PID 1 when the pod shares its process namespace) and exits on SIGTERM/SIGINT. Built static by
 * build.sh; the only file of the local cluster's pause image (FROM scratch), since no registry can be pulled from. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signum) {
    (void)signum;
    _exit(0);
}

static void reap(int signum) {
    (void)signum;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) {
        pause();
    }
}
