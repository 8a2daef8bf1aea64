/* The demo service: an always-on greeter that answers one request per second.
 * Its greeting has a typo ("Helo"); the demo patch fixes it without a restart. */
#include <stdio.h>
#include <unistd.h>

static char reply[128];          /* file-local: the patch writes into it too */
int requests_served;             /* global data shared with the patch */

__attribute__((noipa)) const char *greeting(const char *name)
{
    snprintf(reply, sizeof reply, "Helo, %s!", name);
    return reply;
}

int main(void)
{
    for (;;) {
        requests_served++;
        printf("request %d: %s\n", requests_served, greeting("operator"));
        fflush(stdout);
        sleep(1);
    }
}
