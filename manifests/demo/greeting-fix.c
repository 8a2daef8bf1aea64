/* The demo patch: the corrected greeting. It binds to the service's own data:
 * `reply` is file-local in the service, `requests_served` is global. */
#include <stdio.h>

extern char reply[128];
extern int requests_served;

const char *greeting_fixed(const char *name)
{
    snprintf(reply, sizeof reply, "Hello, %s! (patched, request %d)", name, requests_served);
    return reply;
}
