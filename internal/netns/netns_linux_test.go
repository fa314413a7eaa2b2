package netns_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/airlockhq/airlock/internal/netns"
	"github.com/airlockhq/airlock/internal/testutil/testnet"
	"golang.org/x/sys/unix"
)

func nsOf(path string) (uint64, error) {
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	return st.Ino, err
}

// TestDo: f runs in the target namespace, and no thread stays there afterwards.
func TestDo(t *testing.T) {
	pid := testnet.Process(t)
	want, err := nsOf(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for range 50 {
		err := netns.Do(fd, func() error {
			got, err := nsOf("/proc/thread-self/ns/net")
			if err == nil && got != want {
				err = fmt.Errorf("inside: netns %d, want %d", got, want)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		if got, err := nsOf("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && got == want {
			t.Errorf("thread %s stayed in the sandbox's netns", task.Name())
		}
	}
}
