/* crid's linux test guest: `guest-exit N` ends the VM with exit code N through QEMU's
 * isa-debug-exit device (port 0xf4; QEMU exits with (N << 1) | 1, which crid maps back to N).
 * Debian's cloud kernel has no /dev/port, so busybox cannot write the port itself. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
    int code = argc > 1 ? atoi(argv[1]) : 0;
    if (ioperm(0xf4, 4, 1) != 0) {
        perror("guest-exit: ioperm");
        return 1;
    }
    outb((unsigned char)code, 0xf4);
    /* Without the device the write does nothing. */
    fprintf(stderr, "guest-exit: no isa-debug-exit device\n");
    return 1;
}
