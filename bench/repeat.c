/* repeat N INPUT CMD [ARG]...: runs CMD N times, one after another, each with INPUT as standard
 * input and output to /dev/null, the way an MDA caller (getmail, fetchmail) delivers a mailbox
 * message by message. Exits 1 at the first run that fails, so a crash cannot pass for speed.
 * A shell loop would add a fork of the shell per run to both sides of the comparison. */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: repeat N INPUT CMD [ARG]...\n");
        return 64;
    }
    long n = strtol(argv[1], NULL, 10);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, argv[2], O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    for (long i = 0; i < n; i++) {
        pid_t pid;
        int status;
        int err = posix_spawn(&pid, argv[3], &fa, NULL, &argv[3], environ);
        if (err != 0) {
            fprintf(stderr, "repeat: cannot run %s: error %d\n", argv[3], err);
            return 1;
        }
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "repeat: run %ld of %s failed (status 0x%x)\n", i + 1, argv[3], status);
            return 1;
        }
    }
    return 0;
}
